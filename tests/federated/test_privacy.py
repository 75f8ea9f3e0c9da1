"""Client-level differential privacy: clipping, the noise scale, equal weights, the accountant, and
the DP round loop against the real ClientApp (fake grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrs.federated.aggregation import ClientUpdate
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.local import derive_seed
from fedrs.federated.privacy import DETERMINISTIC, PrivacyConfig, clip_update, epsilon_spent, private_aggregate
from fedrs.federated.server.loop import run_rounds, start_run
from fedrs.federated.server.steps import aggregate_round, collect_updates, configure_round
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config


def test_clipping_bounds_the_update_norm_hand_values():
    reference = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0]), "n": torch.tensor(3)}
    state = {"w": torch.tensor([4.0, 1.0]), "b": torch.tensor([4.0]), "n": torch.tensor(5)}  # update (3, 0, 4)
    clipped, norm = clip_update(state, reference, 1.0)
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(clipped["w"], torch.tensor([1.6, 1.0]))  # 1 + 3/5
    torch.testing.assert_close(clipped["b"], torch.tensor([0.8]))       # 0 + 4/5
    assert int(clipped["n"]) == 5  # counters are not model values
    same, _ = clip_update(state, reference, 10.0)
    torch.testing.assert_close(same["w"], state["w"]) and torch.testing.assert_close(same["b"], state["b"])


def test_noise_follows_sigma_c_over_n_per_modality_group():
    size = 200_000
    global_state = {"shared": torch.zeros(size), "hsi_encoder.w": torch.zeros(size)}
    updates = [ClientUpdate(c, {k: torch.zeros(size) for k in global_state}, 10, mods)
               for c, mods in enumerate([("hsi",), ("hsi",), ("lidar",), ("lidar",)])]
    owner = {"shared": None, "hsi_encoder.w": "hsi"}.get
    cfg = PrivacyConfig(noise_multiplier=2.0, clipping_norm=0.5)
    new, report = private_aggregate(global_state, updates, owner, cfg, torch.Generator().manual_seed(0))
    assert float(new["shared"].std()) == pytest.approx(2.0 * 0.5 / 4, rel=0.01)       # all four clients
    assert float(new["hsi_encoder.w"].std()) == pytest.approx(2.0 * 0.5 / 2, rel=0.01)  # its two holders
    assert report["noise_std_max"] == pytest.approx(0.5) and report["clipped"] == 0


def test_updates_are_clipped_and_averaged_with_equal_weights():
    global_state = {"w": torch.zeros(2)}
    updates = [ClientUpdate(0, {"w": torch.tensor([10.0, 0.0])}, 1000, ("hsi",)),  # norm 10 → clipped to 1
               ClientUpdate(1, {"w": torch.tensor([0.0, 0.5])}, 1, ("hsi",))]
    new, report = private_aggregate(global_state, updates, lambda name: None,
                                    PrivacyConfig(noise_multiplier=0.0, clipping_norm=1.0),
                                    torch.Generator().manual_seed(0))
    # sample counts would give client 0 weight 1000/1001; under DP both count once
    torch.testing.assert_close(new["w"], torch.tensor([0.5, 0.25]))
    assert report["clipped"] == 1 and report["update_norms"] == pytest.approx([10.0, 0.5])


def test_the_accountant_reproduces_the_librarys_published_example():
    # Opacus' own test: σ = 1.5, sampling rate 0.04, 90 epochs (2250 steps), δ = 1e-5 → ε = 7.3291…
    assert epsilon_spent([(1.5, 0.04)] * int(90 / 0.04), 1e-5) == pytest.approx(7.32911117143, rel=1e-9)
    assert epsilon_spent([(0.0, 1.0)], 1e-5) == float("inf") and epsilon_spent([], 1e-5) == 0.0
    # more rounds, or less noise, spend more
    assert epsilon_spent([(1.0, 1.0)] * 10, 1e-5) < epsilon_spent([(1.0, 1.0)] * 20, 1e-5)
    assert epsilon_spent([(2.0, 1.0)] * 10, 1e-5) < epsilon_spent([(1.0, 1.0)] * 10, 1e-5)


def test_a_bad_privacy_block_is_refused_by_name():
    with pytest.raises(ValueError, match="privacy.clipping is 'both'"):
        PrivacyConfig(noise_multiplier=1.0, clipping_norm=1.0, clipping="both")
    with pytest.raises(ValueError, match="clipping_norm must be > 0"):
        PrivacyConfig(noise_multiplier=1.0, clipping_norm=0.0)
    with pytest.raises(ValueError, match="unknown keys"):
        PrivacyConfig.from_dict({"noise_multiplier": 1.0, "clipping_norm": 1.0, "epsilon": 3})


@pytest.mark.parametrize("clipping", ["client", "server"])
def test_a_private_run_clips_noises_and_accounts_every_release(tiny_federation, clipping):
    fed = tiny_federation
    privacy = {"noise_multiplier": 0.5, "clipping_norm": 0.05, "clipping": clipping, "delta": 1e-5}
    grid = FakeGrid(fed["num_clients"])
    result = run_rounds(grid, config(fed, privacy=privacy, num_rounds=2, statistics_pass=True), fed["test"],
                        fed["num_clients"])
    rounds = result["history"]
    # two rounds and the statistics pass: three releases at sampling rate 1, counted by the accountant
    assert rounds[0]["dp_epsilon"] == pytest.approx(epsilon_spent([(0.5, 1.0)], 1e-5))
    assert rounds[1]["dp_epsilon"] == pytest.approx(epsilon_spent([(0.5, 1.0)] * 3, 1e-5))
    assert rounds[0]["dp_noise_std"] == pytest.approx(0.5 * 0.05 / 3)
    uploads = [m for m in grid.received if "arrays" in m.content and m.metadata.message_type == "train"]
    norms = []
    for reply in uploads[:3]:  # round 1's updates, as they reached the server
        state = reply.content.array_records["arrays"].to_torch_state_dict()
        norms.append(float(np.sqrt(sum(float((v.double() - result_state_ref(fed)[k].double()).pow(2).sum())
                                       for k, v in state.items() if v.is_floating_point()))))
    if clipping == "client":  # the server never received an update above C
        assert max(norms) <= 0.05 * (1 + 1e-6)
    else:  # it received them whole, and clipped them itself
        assert max(norms) > 0.05
    # under noised DP a reply says nothing of the client's data beyond counts and sizes: no loss, no norm
    sent = {k for reply in uploads for k in reply.content.metric_records["metrics"]}
    assert sent <= {"client_id", "num_samples", "bytes_dense", "bytes_sent", "compute_seconds"}, sent
    assert all(r["train_loss"] is None and "dp_update_norm_median" not in r for r in rounds)


def result_state_ref(fed):
    """The initial global weights (round 1's reference): same seed, same initialisation."""
    from fedrs.federated.algorithms import get_algorithm
    from fedrs.federated.local import derive_seed

    torch.manual_seed(derive_seed(5, 0))  # config()'s seed
    return get_algorithm("fedavg").build_model(fed["spec"]).state_dict()


def test_exchange_protection_clips_each_pixel_and_adds_noise_of_the_stated_scale():
    from fedrs.federated.privacy import ExchangeProtection, protect_exchange

    gen = torch.Generator().manual_seed(0)
    outputs = {"cnn": torch.randn(400, 8, 2, 2, generator=gen) * 5, "diff": torch.randn(400, 8, 2, 2, generator=gen)}
    clipped, report = protect_exchange(outputs, ExchangeProtection(clipping_norm=1.0), gen)
    per_pixel = torch.cat([clipped[k].reshape(400, -1) for k in ("cnn", "diff")], dim=1).norm(dim=1)
    assert float(per_pixel.max()) <= 1.0 + 1e-5 and report["exchange_clipped_fraction"] == 1.0
    # the direction of each pixel's outputs is kept
    ratio = clipped["cnn"][0] / outputs["cnn"][0]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.flatten()[0])))
    noised, report = protect_exchange(outputs, ExchangeProtection(clipping_norm=1.0, noise_multiplier=0.5), gen)
    assert float((noised["cnn"] - clipped["cnn"]).std()) == pytest.approx(0.5, rel=0.05)
    assert report["exchange_noise_std"] == 0.5


def test_the_exchange_option_changes_what_is_sent_and_is_reported(tiny_split_federation):
    from fedrs.federated.server.steps import configure_round
    from fedrs.federated.wire import unpack_tensors
    from tests.federated.server.runs import started

    fed = tiny_split_federation
    relayed = {}
    for label, option in (("plain", None), ("protected", {"clipping_norm": 0.5, "noise_multiplier": 0.1})):
        grid, run, _ = started(fed, algorithm="feddiff", min_clients=2, client_data_dirs=[fed["features_dir"]],
                               exchange_privacy=option)
        record = configure_round(run, 1)
        run.protocol.before_updates(grid, run, record)
        relayed[label] = {c: unpack_tensors(*pair) for c, pair in record.relayed.items()}
        row = record.row()
    assert row["exchange_noise_std"] == pytest.approx(0.05) and 0.0 <= row["exchange_clipped_fraction"] <= 1.0
    for cid, plain in relayed["plain"].items():
        protected = relayed["protected"][cid]
        assert not torch.allclose(plain["cnn"], protected["cnn"])
        # what the partner receives: each pixel's outputs within C, plus noise of std σ·C
        norms = torch.cat([protected[k].reshape(len(protected[k]), -1) for k in ("cnn", "diff")], dim=1).norm(dim=1)
        width = sum(protected[k][0].numel() for k in ("cnn", "diff"))
        assert float(norms.max()) <= 0.5 + 4 * 0.05 * width ** 0.5


def _released_round(fed, privacy, seed=5):
    """One private round on the fake grid: what the server released, what it would have released
    without noise (the clipped mean it computed), and the run's configuration."""
    cfg = config(fed, privacy=privacy, num_rounds=1, statistics_pass=False, seed=seed)
    grid = FakeGrid(fed["num_clients"])
    run, _ = start_run(grid, cfg, fed["test"], fed["num_clients"])
    record = configure_round(run, 1)
    collect_updates(grid, run, record)
    before = {k: v.clone() for k, v in run.global_state.items()}
    aggregate_round(run, record)
    return cfg, before, record, run.global_state


def _seed_aware_denoise(cfg, released):
    """The attack of a participant holding the run's configuration (its seed travels in every
    message): regenerate the release's noise as a seed-derived generator gives it, and subtract it."""
    privacy = PrivacyConfig.from_dict(cfg.privacy)
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, 9_001, 1, 0))
    out = {}
    for name, value in released.items():  # private_aggregate draws per tensor, in this order, float64
        if not torch.is_floating_point(value):
            continue
        std = privacy.noise_multiplier * privacy.clipping_norm / 3
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float64) * std
        out[name] = value.double() - noise
    return out


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_participant_who_knows_the_seed_cannot_remove_the_noise(tiny_federation, deterministic):
    """The adversary is any organisation: it knows the configuration and the seed. With the OS's
    noise it cannot strip the release; with the test-only deterministic noise it can (so this test
    fails the day the noise is derived from the run seed again)."""
    privacy = {"noise_multiplier": 1.0, "clipping_norm": 0.05, "clipping": "client",
               "deterministic_noise": deterministic}
    cfg, before, record, released = _released_round(tiny_federation, privacy)
    # the clipped mean without noise, recomputed from the round's own updates
    clean, _ = private_aggregate(before, record.accepted, get_algorithm("fedavg").owner,
                                 PrivacyConfig.from_dict({**privacy, "noise_multiplier": 0.0}),
                                 torch.Generator().manual_seed(0))
    guess = _seed_aware_denoise(cfg, released)
    error = max(float((guess[k] - clean[k].double()).abs().max()) for k in guess)
    std = 0.05 / 3
    if deterministic:
        assert error < 1e-3 * std and record.row()["noise"] == DETERMINISTIC
        assert record.row()["dp_epsilon"] is None  # no guarantee is claimed for removable noise
    else:
        assert error > std and "noise" not in record.row() and record.row()["dp_epsilon"] > 0


def test_two_runs_with_the_same_seed_release_different_noise(tiny_federation):
    privacy = {"noise_multiplier": 1.0, "clipping_norm": 0.05, "clipping": "client"}
    first = _released_round(tiny_federation, privacy)[3]
    second = _released_round(tiny_federation, privacy)[3]
    floats = [k for k, v in first.items() if torch.is_floating_point(v)]
    assert floats and all(not torch.equal(first[k], second[k]) for k in floats)


def _relayed(fed, protection):
    """Round 1's exchange on the fake grid, uncoded: what each client's partner receives of it."""
    from fedrs.federated.wire import unpack_tensors
    from tests.federated.server.runs import started

    grid, run, _ = started(fed, algorithm="feddiff", min_clients=2, client_data_dirs=[fed["features_dir"]],
                           exchange_privacy=protection, exchange_compression=None)
    record = configure_round(run, 1)
    run.protocol.before_updates(grid, run, record)
    partner = {c: next(p for p in run.clients if p != c and run.clients[p]["site"] == run.clients[c]["site"])
               for c in record.relayed}
    return run.cfg, record, {partner[c]: unpack_tensors(*pair) for c, pair in record.relayed.items()}


@pytest.mark.parametrize("deterministic", [False, True])
def test_the_partner_who_knows_the_seed_cannot_remove_the_exchange_noise(tiny_split_federation, deterministic):
    """The adversary is the site partner (or the server relaying): it holds the run's settings and
    the noised outputs it received, and regenerates the sender's noise from the seed."""
    from fedrs.federated.privacy import ExchangeProtection

    clean = _relayed(tiny_split_federation, {"clipping_norm": 0.5, "noise_multiplier": 0.0})[2]
    protection = {"clipping_norm": 0.5, "noise_multiplier": 0.2, "deterministic_noise": deterministic}
    cfg, record, received = _relayed(tiny_split_federation, protection)
    std = ExchangeProtection.from_dict(protection).noise_multiplier * 0.5
    errors = []
    for sender, outputs in received.items():
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, 7_007, 1, sender))
        for name in sorted(outputs):  # protect_exchange draws per tensor, in name order, float64
            noise = torch.randn(outputs[name].shape, generator=generator, dtype=torch.float64) * std
            errors.append(float((outputs[name].double() - noise - clean[sender][name].double()).abs().mean()))
    if deterministic:
        assert max(errors) < 1e-3 * std and record.row()["noise"] == DETERMINISTIC
    else:
        assert min(errors) > 0.5 * std and "noise" not in record.row()


def test_without_noise_the_norms_that_tune_the_clipping_are_reported(tiny_federation):
    """σ = 0 gives no guarantee (ε = ∞): the clients' norms and losses are shown, for choosing C."""
    fed = tiny_federation
    privacy = {"noise_multiplier": 0.0, "clipping_norm": 1e9}
    result = run_rounds(FakeGrid(3), config(fed, privacy=privacy, num_rounds=1, statistics_pass=False), fed["test"], 3)
    (row,) = result["history"]
    assert row["dp_epsilon"] is None and row["dp_update_norm_median"] > 0 and row["train_loss"] > 0


def test_feddiffs_epsilon_is_for_a_site_and_says_what_it_does_not_cover(tiny_split_federation):
    """A FedDiff client's pixels reach its partner's update (relayed outputs, shared labels): the unit
    is the site, whose two organisations move the sums by up to 2C — ε is accounted for σ/2. The
    run's summary names what the ε does not cover: the relayed outputs, stage 1 trained without DP."""
    from fedrs.results import run_history, run_summary

    fed = tiny_split_federation
    privacy = {"noise_multiplier": 1.0, "clipping_norm": 0.5, "clipping": "client"}
    result = run_rounds(FakeGrid(4), config(fed, algorithm="feddiff", min_clients=2, num_rounds=1,
                                            client_data_dirs=[fed["features_dir"]], privacy=privacy,
                                            statistics_pass=False, calibration=None), fed["test"], 4)
    (row,) = result["history"]
    assert row["dp_epsilon"] == pytest.approx(epsilon_spent([(0.5, 1.0)], 1e-5)) and row["dp_unit"].startswith("site")
    assert row["dp_epsilon"] > epsilon_spent([(1.0, 1.0)], 1e-5)  # the organisation-level number was too low
    diffusion = {"algorithm": "feddiff_diffusion", "rounds": [], "stages": {"hsi": [{"round": 1, "val_l1": 0.8}]}}
    summary = run_summary({**run_history("feddiff", result["history"], 0.0), "earlier_stages": [diffusion]})
    assert summary["dp_unit"].startswith("site")
    assert summary["dp_not_covered"] == "feddiff_diffusion (hsi), the relayed branch outputs"
