"""Record-level DP (DP-SGD in every client's local update): per-record gradients, the bound one
record has on a step, secret batches and noise, BatchNorm refused, and the record accountant of the
round loop — FedAvg on the fake grid, and FedDiff, whose site's two organisations share a budget
and whose relayed outputs count as releases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedrs.federated.local import TrainConfig, local_training, supervised_objective
from fedrs.federated.privacy import epsilon_spent
from fedrs.federated.record_privacy import (
    RecordPrivacy,
    clipped_gradient_sum,
    noised_mean_gradient,
    poisson_batches,
    sampling_rate,
    steps_per_round,
)
from fedrs.federated.server.loop import run_rounds, start_run
from fedrs.models.fusion_cnn import FusionCNN, FusionSpec
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config

PRIVATE = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 1e-5}


def _problem(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 5, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

    def loss_of(index: np.ndarray) -> torch.Tensor:
        return F.cross_entropy(model(x[index]), y[index])

    return model, x, y, loss_of


def test_per_record_gradients_are_each_records_own_and_sum_to_the_batch_gradient():
    model, x, y, loss_of = _problem()
    params = list(model.parameters())
    index = np.arange(12)
    total, norms, losses = clipped_gradient_sum(params, index, loss_of, clipping_norm=1e9)  # nothing clipped
    batch = torch.autograd.grad(loss_of(index) * 12, params)  # the mean loss × n: the sum of the records' gradients
    for t, g in zip(total, batch, strict=True):
        torch.testing.assert_close(t.float(), g, rtol=1e-5, atol=1e-6)
    alone = torch.autograd.grad(loss_of(np.asarray([3])), params)
    assert norms[3] == pytest.approx(float(torch.sqrt(sum((g ** 2).sum() for g in alone))), rel=1e-6)
    assert losses[3] == pytest.approx(float(loss_of(np.asarray([3])).detach()), rel=1e-6)


def test_one_record_moves_a_steps_gradient_sum_by_at_most_the_clipping_norm():
    """The adversary plants one record of its choosing (a huge input, a wrong label): with clipping
    its effect on the step is at most C, whatever it is; without clipping it is far larger — so this
    test fails if the clipping is removed or applied to the batch instead of each record."""
    model, x, y, _ = _problem()
    params = list(model.parameters())
    poisoned_x, poisoned_y = torch.cat([x, 1e3 * torch.ones(1, 5)]), torch.cat([y, torch.tensor([2])])

    def loss_of(index: np.ndarray) -> torch.Tensor:
        return F.cross_entropy(model(poisoned_x[index]), poisoned_y[index])

    for clipping_norm, bounded in ((0.5, True), (1e9, False)):
        without = clipped_gradient_sum(params, np.arange(12), loss_of, clipping_norm)[0]
        with_it = clipped_gradient_sum(params, np.arange(13), loss_of, clipping_norm)[0]
        moved = float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(with_it, without, strict=True))))
        assert (moved <= 0.5 * (1 + 1e-9)) == bounded, (clipping_norm, moved)


def test_the_noise_has_the_stated_scale_and_poisson_batches_the_stated_rate():
    cfg = RecordPrivacy(noise_multiplier=2.0, clipping_norm=0.5)
    zero = [torch.zeros(100_000, dtype=torch.float64)]
    noised = noised_mean_gradient(zero, cfg, 8.0, torch.Generator().manual_seed(0))
    assert float(noised[0].std()) == pytest.approx(2.0 * 0.5 / 8.0, rel=0.02)
    batches = list(poisson_batches(200, 16, 3, torch.Generator().manual_seed(0)))
    assert len(batches) == steps_per_round(200, 16, 3) == 3 * 13
    sizes = np.array([b.size for b in batches])
    assert sizes.mean() == pytest.approx(16, rel=0.15) and sizes.std() > 0  # random sizes, not fixed batches
    assert sampling_rate(200, 16) == 0.08 and sampling_rate(10, 16) == 1.0


def _train(fed_model, data, record_privacy, seed=3):
    torch.manual_seed(0)
    model = FusionCNN(FusionSpec(bands=4, lidar_channels=1, num_classes=3, width=8, dim=8, norm=fed_model))
    cfg = TrainConfig(epochs=1, batch_size=4, record_privacy=record_privacy)
    metrics = local_training(model, 12, supervised_objective(model, data, ("hsi", "lidar"), cfg).batch_loss, cfg, seed)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), metrics


@pytest.fixture
def patches():
    gen = torch.Generator().manual_seed(1)
    return {"hsi": torch.randn(12, 4, 5, 5, generator=gen).numpy(),
            "lidar": torch.randn(12, 1, 5, 5, generator=gen).numpy(), "labels": np.arange(12) % 3}


def test_batches_and_noise_come_from_the_os_not_from_the_seed(patches):
    """A participant knows the run seed; with it, deterministic (test-only) runs repeat bit for bit —
    so it could replay the batches and noise — while real runs with the same seed never do."""
    first, metrics = _train("group", patches, PRIVATE)
    second, _ = _train("group", patches, PRIVATE)
    assert not torch.equal(first, second)
    replayable = {**PRIVATE, "deterministic_noise": True}
    assert torch.equal(_train("group", patches, replayable)[0], _train("group", patches, replayable)[0])
    assert metrics["dp_steps"] == steps_per_round(12, 4, 1) and 0.0 <= metrics["dp_clipped_fraction"] <= 1.0


def test_batchnorm_is_refused_by_name(patches):
    with pytest.raises(ValueError, match="BatchNorm.*norm: group"):
        _train("batch", patches, PRIVATE)


def _group_norm(spec):
    return {**spec, "norm": "group"}


def test_a_record_private_fedavg_run_accounts_each_organisation_and_publishes_nothing_else(tiny_federation):
    """Two DP-SGD rounds and a calibration pass whose class sums each client noises itself: the
    accountant composes every organisation's steps and its one statistics release."""
    fed = tiny_federation
    train = {"epochs": 1, "batch_size": 8, "record_privacy": PRIVATE}
    calibration = {"noise_multiplier": 2.0, "feature_clip": 5.0, "steps": 10, "virtual_per_class": 20}
    grid = FakeGrid(fed["num_clients"])
    result = run_rounds(grid, config(fed, model=_group_norm(fed["spec"]), train=train, num_rounds=2,
                                     calibration=calibration), fed["test"], fed["num_clients"])
    rounds = result["history"]
    sizes = [info["num_samples"] for info in result["clients"].values()]

    def expected(r, statistics=()):  # the worst-protected organisation: the one with the largest q and most steps
        return max(epsilon_spent([(1.0, sampling_rate(n, 8), steps_per_round(n, 8, 1))] * r + list(statistics), 1e-5)
                   for n in sizes)

    assert rounds[0]["dp_record_epsilon"] == pytest.approx(expected(1))
    with_statistics = expected(2, [(2.0, 1.0, 1)])
    assert rounds[1]["dp_record_epsilon"] == pytest.approx(with_statistics) and with_statistics > expected(2)
    assert rounds[1]["dp_record_unit"].startswith("training record") and rounds[1]["calibration_clients"] == 3
    replies = [m for m in grid.received if m.metadata.message_type in ("train", "query.calibration")]
    sent = {k for reply in replies for k in reply.content.metric_records["metrics"]}
    assert sent <= {"client_id", "num_samples", "bytes_dense", "bytes_sent", "compute_seconds", "dp_steps"}, sent
    statistics = [m for m in replies if m.metadata.message_type == "query.calibration"]
    assert all("num_samples" not in m.content.metric_records["metrics"] for m in statistics)
    counts = np.concatenate([m.content.array_records["arrays"]["count"].numpy() for m in statistics])
    assert not np.allclose(counts, np.round(counts))  # noised on the client: no exact class histogram went up
    assert all(r["train_loss"] is None for r in rounds)


def test_record_privacy_refuses_what_would_leak_past_it(tiny_federation, tiny_split_federation):
    fed, split = tiny_federation, tiny_split_federation
    train = {"epochs": 1, "batch_size": 8, "record_privacy": PRIVATE}
    with pytest.raises(ValueError, match="BatchNorm"):
        start_run(FakeGrid(3), config(fed, train=train), fed["test"], 3)
    with pytest.raises(ValueError, match="calibration: null"):
        start_run(FakeGrid(3), config(fed, model=_group_norm(fed["spec"]), train=train,
                                      calibration={}), fed["test"], 3)
    with pytest.raises(ValueError, match="exchange_privacy with noise_multiplier > 0"):
        start_run(FakeGrid(4), config(split, algorithm="feddiff", model=_group_norm(split["spec"]), train=train,
                                      min_clients=2, client_data_dirs=[split["features_dir"]], calibration=None),
                  split["test"], 4)


def test_feddiffs_record_budget_is_a_sites_and_counts_the_relayed_outputs(tiny_split_federation):
    """A site's pixel is a record at both of its organisations and its outputs are relayed each round:
    the budget composes both organisations' DP-SGD steps and both exchange releases."""
    fed = tiny_split_federation
    train = {"epochs": 1, "batch_size": 8, "record_privacy": PRIVATE}
    exchange = {"clipping_norm": 1.0, "noise_multiplier": 4.0}
    result = run_rounds(FakeGrid(4), config(fed, algorithm="feddiff", model=_group_norm(fed["spec"]), train=train,
                                            min_clients=2, num_rounds=1, client_data_dirs=[fed["features_dir"]],
                                            exchange_privacy=exchange, calibration=None), fed["test"], 4)
    (row,) = result["history"]
    clients = {int(c): i["num_samples"] for c, i in result["clients"].items()}
    sites: dict[int, list[int]] = {}
    from tests.federated.server.runs import started

    _, run, _ = started(fed, algorithm="feddiff", min_clients=2, client_data_dirs=[fed["features_dir"]])
    for c in clients:
        sites.setdefault(run.clients[c]["site"], []).append(c)
    expected = max(epsilon_spent([r for c in members for r in ((1.0, sampling_rate(clients[c], 8),
                                                                steps_per_round(clients[c], 8, 1)), (4.0, 1.0, 1))],
                                 1e-5) for members in sites.values())
    assert row["dp_record_epsilon"] == pytest.approx(expected) and row["dp_record_unit"].startswith("pixel of a site")
    assert "exchange_clipped_fraction" not in row and row["exchange_noise_std"] == pytest.approx(4.0)


def test_fedcmis_objective_trains_under_record_privacy(tiny_federation):
    fed = tiny_federation
    train = {"epochs": 1, "batch_size": 8, "record_privacy": PRIVATE}
    cfg = config(fed, algorithm="fedcmi", model=_group_norm(fed["spec"]), train=train, num_rounds=1)
    result = run_rounds(FakeGrid(fed["num_clients"]), cfg, fed["test"], fed["num_clients"])
    (row,) = result["history"]
    assert row["accepted"] == [0, 1, 2] and row["dp_record_epsilon"] > 0


def test_stage_ones_ddpm_trains_under_record_privacy(rng):
    """The U-Net has GroupNorm only: its denoising loss of one record is a per-record gradient."""
    from fedrs.federated.algorithms import get_algorithm
    from tests.feddiff.test_algorithm import client

    alg = get_algorithm("ddpm_lidar")
    model = alg.build_model({"in_channels": 2, "base_channels": 8, "steps": 50})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, metrics = alg.client_update(model, client(rng, "lidar"), ("lidar",),
                                       {"epochs": 1, "batch_size": 8, "record_privacy": PRIVATE}, seed=0)
    assert metrics["dp_steps"] > 0 and any(not torch.equal(state[k], before[k]) for k in before)


def test_augmented_records_are_each_turned_alone_and_the_turns_are_secret():
    """Under record DP a record's loss sees that record alone, turned by its own element; the turns, like
    the batches, come from the client's secret draws — a participant knowing the seed cannot replay them."""
    from fedrs.federated.local import Batch, dihedral

    x = torch.randn(10, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 3))

    def run(privacy) -> list[tuple[int, torch.Tensor]]:
        seen = []

        def loss(batch: Batch) -> torch.Tensor:
            taken = batch.take(x)
            assert len(batch.index) == 1 and batch.turns is not None and len(batch.turns) == 1
            seen.append((int(batch.index[0]), taken[0]))
            return model(taken).pow(2).mean()

        cfg = TrainConfig(epochs=2, batch_size=5, lr=0.0, augment="dihedral", record_privacy=privacy)
        local_training(model, 10, loss, cfg, seed=4)
        return seen

    every = dihedral(x.repeat_interleave(8, 0), torch.arange(8).repeat(10)).reshape(10, 8, 2, 3, 3)

    def elements(seen: list[tuple[int, torch.Tensor]]) -> list[int]:
        """The element each record call was turned by (one of its own eight symmetries, or the test fails)."""
        found = [next((g for g in range(8) if torch.equal(t, every[i, g])), None) for i, t in seen]
        assert None not in found
        return found

    first, second = elements(run(PRIVATE)), elements(run(PRIVATE))
    assert len(set(first)) > 1
    # the k-th record call's turn is not the k-th draw of anything the seed fixes: two runs differ
    shared = min(len(first), len(second))
    assert first[:shared] != second[:shared]
    replay = {**PRIVATE, "deterministic_noise": True}  # the test-only switch replays them
    assert elements(run(replay)) == elements(run(replay))
