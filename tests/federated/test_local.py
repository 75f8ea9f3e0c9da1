import pytest
import torch

from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.local import TrainConfig, derive_seed, proximal_term, supervised_update
from tests.federated.tiny_data import tiny_client_data as tiny_data

SPEC = {"bands": 5, "lidar_channels": 1, "num_classes": 3, "width": 8, "dim": 8}


def test_proximal_term_by_hand():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 3.0]]))
    ref = {"weight": torch.tensor([[0.0, 1.0]])}
    assert proximal_term(model, ref, {"weight"}).item() == pytest.approx(1.0 + 4.0)


def test_fedprox_keeps_weights_near_the_global_model(rng):
    alg = get_algorithm("fedprox")
    data = tiny_data(rng)

    def drift(mu):
        torch.manual_seed(0)
        model = alg.build_model(SPEC)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        supervised_update(
            model, data, ("hsi", "lidar"), TrainConfig(epochs=3, batch_size=8, lr=0.05, proximal_mu=mu), seed=1
        )
        return sum(float((p.detach() - start[n]).pow(2).sum()) for n, p in model.named_parameters())

    assert drift(100.0) < 0.5 * drift(0.0)


def test_same_seed_same_update(rng):
    alg = get_algorithm("fedavg")
    data = tiny_data(rng)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = alg.build_model(SPEC)
        state, metrics = alg.client_update(
            model, data, ("hsi", "lidar"), {"epochs": 2, "batch_size": 8}, seed=derive_seed(3, 1, 2)
        )
        states.append(state)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert metrics["num_samples"] == 24 and metrics["train_loss"] > 0


def test_unimodal_client_sends_and_changes_only_what_it_holds(rng):
    alg = get_algorithm("fedavg")
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, _ = alg.client_update(
        model, tiny_data(rng, modalities=("hsi",)), ("hsi",), {"epochs": 1, "batch_size": 8}, seed=0
    )
    assert state and not any(k.startswith("lidar_encoder.") for k in state)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before if k.startswith("lidar_encoder."))
    assert any(not torch.equal(state[k], before[k]) for k in state if k.startswith("hsi_encoder."))


def test_unimodal_algorithm_eligibility():
    assert not get_algorithm("fedavg_hsi").is_eligible(("lidar",))
    assert get_algorithm("fedavg_lidar").is_eligible(("hsi", "lidar"))
    with pytest.raises(ValueError, match="unknown algorithm 'fedsgd'"):
        get_algorithm("fedsgd")


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown keys \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})


def test_cosine_schedule_by_hand():
    from fedrs.federated.local import lr_at_round

    assert lr_at_round(0.1, 1, 5) == pytest.approx(0.1)
    assert lr_at_round(0.1, 3, 5) == pytest.approx(0.1 * (0.05 + 0.95 * 0.5))
    assert lr_at_round(0.1, 5, 5) == pytest.approx(0.005)
    assert lr_at_round(0.1, 4, 5, "constant") == 0.1
    with pytest.raises(ValueError, match="expected 'cosine' or 'constant'"):
        lr_at_round(0.1, 2, 5, "step")


def test_the_one_training_loop_seeds_batches_and_accumulates(rng):
    from fedrs.federated.local import Batch, local_training

    model = torch.nn.Linear(3, 1)
    x = torch.as_tensor(rng.standard_normal((10, 3)), dtype=torch.float32)
    seen: list[list[int]] = []

    def loss(batch: Batch):
        seen.append(sorted(batch.index.tolist()))
        assert batch.device.type == "cpu" and batch.generator is not None
        return model(batch.take(x)).pow(2).mean(), {"batch_size": float(batch.index.size)}

    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.1)
    metrics = local_training(model, 10, loss, cfg, seed=7, trainable={"weight"}, min_batch=3)
    # 10 samples in batches of 4: 4, 4 and a batch of 2 (below min_batch: skipped), twice
    assert len(seen) == 4 and all(len(s) == 4 for s in seen)
    assert metrics["num_samples"] == 10 and metrics["batch_size"] == 4.0 and metrics["train_loss"] > 0
    assert model.bias.requires_grad  # every parameter is trainable again afterwards
    first = [list(s) for s in seen]
    seen.clear()
    bias = model.bias.detach().clone()
    local_training(model, 10, loss, cfg, seed=7, trainable={"weight"}, min_batch=3)
    assert seen == first  # the same seed, the same batches
    assert torch.equal(model.bias.detach(), bias)  # only the trainable subset moved


def test_the_loop_runs_the_batch_loss_under_the_precision_policy(rng):
    from fedrs.federated.local import local_training

    model = torch.nn.Linear(3, 2)
    dtypes = []

    def loss(batch):
        out = model(batch.take(rng.standard_normal((6, 3))))
        dtypes.append(out.dtype)
        return out.float().pow(2).mean()

    local_training(model, 6, loss, TrainConfig(epochs=1, batch_size=6), seed=0)
    local_training(model, 6, loss, TrainConfig(epochs=1, batch_size=6, precision="bf16-force"), seed=0)
    assert dtypes == [torch.float32, torch.bfloat16] and model.weight.dtype == torch.float32


def test_kept_optimizer_state_continues_where_the_last_round_stopped(rng):
    from fedrs.federated.local import local_training

    model = torch.nn.Linear(3, 1)
    x = torch.as_tensor(rng.standard_normal((8, 3)), dtype=torch.float32)

    def loss(batch):
        return model(batch.take(x)).pow(2).mean()

    carry: dict = {}
    kept = TrainConfig(epochs=1, batch_size=4, lr=0.01, keep_optimizer_state=True)
    local_training(model, 8, loss, kept, seed=0, carry=carry)
    assert carry["optimizer"]["state"][0]["step"] == 2  # two batches of Adam
    local_training(model, 8, loss, TrainConfig(**{**kept.to_dict(), "lr": 0.005}),
                   seed=1, carry=carry)
    assert carry["optimizer"]["state"][0]["step"] == 4 and carry["optimizer"]["param_groups"][0]["lr"] == 0.005
    fresh: dict = {}
    local_training(model, 8, loss, TrainConfig(epochs=1, batch_size=4), seed=0, carry=fresh)
    assert fresh == {}  # without keep_optimizer_state nothing is carried


def test_decoupled_decay_shrinks_only_the_named_weights():
    from fedrs.federated.local import local_training

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(epochs=1, batch_size=2, lr=0.0, decoupled_decay={"conv": 0.5})  # lr 0: only the decay acts
    local_training(model, 2, lambda b: model(torch.ones(2, 1, 3, 3)).sum() * 0.0, cfg, seed=0)
    # w ← w − lr·2λ·w uses the optimiser's lr; with lr = 0 nothing moves, with lr = 0.1 the conv shrinks by 10 %
    assert torch.equal(model[0].weight, before["0.weight"])
    cfg = TrainConfig(epochs=1, batch_size=2, lr=0.1, decoupled_decay={"conv": 0.5}, optimizer="sgd", momentum=0.0,
                      weight_decay=0.0)
    local_training(model, 2, lambda b: model(torch.ones(2, 1, 3, 3)).sum() * 0.0, cfg, seed=0)
    assert torch.allclose(model[0].weight, 0.9 * before["0.weight"])
    assert torch.equal(model[2].weight, before["2.weight"]) and torch.equal(model[0].bias, before["0.bias"])


def test_a_statistics_pass_recomputes_batchnorm_statistics_and_trains_nothing(rng):
    from fedrs.federated.local import Batch, Objective, objective_statistics

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    x = torch.as_tensor(rng.normal(2.0, 3.0, (40, 3)), dtype=torch.float32)
    weights = {k: v.clone() for k, v in model.named_parameters()}

    def loss(batch: Batch) -> torch.Tensor:
        return model(batch.take(x)).pow(2).mean()

    cfg = TrainConfig(epochs=3, batch_size=20, lr=0.1)
    state, metrics = objective_statistics(model, Objective(40, loss, cfg), seed=1)
    assert set(state) == {"0.running_mean", "0.running_var", "0.num_batches_tracked"}  # all that is sent
    bn = model[0]
    halves = [x[i] for i in torch.randperm(40, generator=torch.Generator().manual_seed(1)).split(20)]
    assert torch.allclose(bn.running_mean, torch.stack([h.mean(0) for h in halves]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([h.var(0) for h in halves]).mean(0), atol=1e-4)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2  # one pass, whatever the epochs
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())
    assert metrics["num_samples"] == 40 and metrics["statistics_loss"] > 0


def test_dihedral_turns_are_the_eight_symmetries_of_the_square_and_keep_the_centre():
    from fedrs.federated.local import dihedral

    x = torch.arange(2 * 16, dtype=torch.float32).reshape(1, 2, 4, 4).repeat(8, 1, 1, 1)
    turned = dihedral(x, torch.arange(8))
    images = {tuple(t.flatten().tolist()) for t in turned}
    assert len(images) == 8  # eight distinct elements
    for g in range(8):  # g quarter turns (counter-clockwise), then a left-right mirror for g >= 4
        expected = torch.rot90(x[0], g % 4, dims=(-2, -1))
        assert torch.equal(turned[g], expected.flip(-1) if g >= 4 else expected)
    assert torch.equal(turned[4], x[0].flip(-1)) and torch.equal(turned[2], x[0].flip(-1).flip(-2))
    for t in turned:  # the centre 2×2 block of an even patch keeps its pixels (the label's pixel stays in it)
        assert sorted(t[:, 1:3, 1:3].flatten().tolist()) == sorted(x[0, :, 1:3, 1:3].flatten().tolist())
    odd = torch.randn(8, 3, 5, 5)
    assert torch.equal(dihedral(odd, torch.arange(8))[:, :, 2, 2], odd[:, :, 2, 2])  # the centre pixel itself
    with pytest.raises(ValueError, match=r"square .*\(2, 1, 4, 3\)"):
        dihedral(torch.zeros(2, 1, 4, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="1 elements for 2 samples"):
        dihedral(torch.zeros(2, 1, 4, 4), torch.zeros(1, dtype=torch.long))
    for bad in (torch.tensor([0, 8]), torch.tensor([-1, 0]), torch.tensor([0.0, 1.0])):  # no silent wrap-around
        with pytest.raises(ValueError, match="integers 0-7"):
            dihedral(torch.zeros(2, 1, 4, 4), bad)
    channels_last = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)  # any layout, same turn
    assert torch.equal(dihedral(channels_last, torch.tensor([1, 5, 2, 7])),
                       dihedral(channels_last.contiguous(), torch.tensor([1, 5, 2, 7])))
    assert dihedral(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)).shape == (0, 1, 4, 4)


def test_a_batch_turns_every_image_shaped_array_alike_and_nothing_else(rng):
    from fedrs.federated.local import Batch, dihedral

    hsi = rng.standard_normal((6, 4, 8, 8)).astype("float32")
    lidar = hsi[:, :1].copy()  # a second modality, pixel-aligned with the first
    maps = torch.as_tensor(hsi[:, :, 3:5, 3:5].copy())  # a partner's 2×2 branch maps of the same pixels
    labels = torch.arange(6)
    batch = Batch(rng.permutation(6), torch.device("cpu"), torch.Generator(), torch.tensor([1, 2, 3, 5, 6, 7]))
    h, li, m = batch.take(hsi), batch.take(lidar), batch.take(maps)
    assert torch.equal(li, h[:, :1]) and torch.equal(m, h[:, :, 3:5, 3:5])  # still aligned after the turn
    for j, (i, g) in enumerate(zip(batch.index, batch.turns, strict=True)):  # sample j: its own pixel, its own turn
        assert torch.equal(h[j], dihedral(torch.as_tensor(hsi[i:i + 1]), g.reshape(1))[0])
    assert not torch.equal(h, torch.as_tensor(hsi[batch.index]))
    assert torch.equal(batch.take(labels, torch.long), labels[batch.index])  # not image-shaped: as it was


def test_augmentation_is_seeded_and_off_leaves_the_shuffle_as_it_was(rng):
    from fedrs.federated.local import Batch, dihedral, local_training

    x = torch.as_tensor(rng.standard_normal((12, 2, 3, 3)), dtype=torch.float32)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(18, 1))

    def run(augment: str) -> list[tuple[list[int], torch.Tensor]]:
        seen = []

        def loss(batch: Batch):
            taken = batch.take(x)
            seen.append((batch.index.tolist(), taken))
            return model(taken).pow(2).mean()

        local_training(model, 12, loss, TrainConfig(epochs=2, batch_size=4, lr=0.0, augment=augment), seed=5)
        return seen

    plain, turned, again = run("none"), run("dihedral"), run("dihedral")
    generator = torch.Generator().manual_seed(5)
    orders = [torch.randperm(12, generator=generator).tolist() for _ in range(2)]
    # without augmentation the generator draws only the shuffles: the second epoch's too is as it was
    assert [b for b, _ in plain] == [orders[e][k:k + 4] for e in range(2) for k in (0, 4, 8)]
    assert all(torch.equal(a, x[i]) for i, a in plain)
    assert all(torch.equal(a[1], b[1]) and a[0] == b[0] for a, b in zip(turned, again, strict=True))  # seeded
    assert any(not torch.equal(a, x[i]) for i, a in turned)
    for i, a in turned:  # every sample is one of its own eight symmetries
        candidates = dihedral(x[i].repeat_interleave(8, 0).reshape(len(i), 8, 2, 3, 3).flatten(0, 1),
                              torch.arange(8).repeat(len(i))).reshape(len(i), 8, 2, 3, 3)
        assert all(any(torch.equal(s, c) for c in cs) for s, cs in zip(a, candidates, strict=True))
    with pytest.raises(ValueError, match="augment 'flip'.*dihedral"):
        TrainConfig(augment="flip")
