"""The round loop's steps, one at a time, against a fake grid that calls the real ClientApp."""

import numpy as np
import pytest
import torch

from fedrs.federated.server import (
    FailureWatch,
    FederatedConfig,
    RoundRecord,
    SystematicFailure,
    aggregate_round,
    collect_updates,
    configure_round,
    evaluate_round,
    exchange_features,
    loss_growth,
    record_round,
    run_rounds,
    start_run,
)
from tests.federated.fake_grid import FakeGrid


def config(fed, **overrides):
    base = dict(algorithm="fedavg", model=fed["spec"], train={"epochs": 1, "batch_size": 8}, num_rounds=3,
                min_clients=1, seed=5, partition_dir=fed["dir"], eval_samples=200)
    return FederatedConfig.from_dict({**base, **overrides})


def started(fed, grid=None, **overrides):
    grid = grid or FakeGrid(fed["num_clients"])
    run, first = start_run(grid, config(fed, **overrides), fed["test"], fed["num_clients"])
    return grid, run, first


def test_configure_samples_clients_and_encodes_their_downloads(tiny_federation):
    _, run, first = started(tiny_federation, clients_per_round=2, downlink_compression={"rank": 2})
    assert first == 1 and run.eligible == [0, 1, 2]
    record = configure_round(run, 1)
    assert len(record.sampled) == 2 and set(record.downloads) == set(record.sampled)
    assert record.settings["round"] == 1 and record.lr == pytest.approx(1e-3)
    # the first download of each client is dense (it holds nothing yet) and logged
    assert [(t["direction"], t["payload"]) for t in record.traffic] == [("down", "weights")] * 2
    assert all(t["bytes_sent"] == t["bytes_dense"] > 0 for t in record.traffic)
    again = configure_round(run, 2)  # the same seed, the next draw: deterministic but not fixed
    assert len(again.sampled) == 2


def test_collect_records_failed_and_silent_clients_apart(tiny_federation):
    grid, run, _ = started(tiny_federation, grid=FakeGrid(3, silent={(1, 2)}), faults={"raise": [[1, 0]]})
    record = configure_round(run, 1)
    collect_updates(grid, run, record)
    assert [u.client_id for u in record.updates] == [1]
    (failed,) = record.failed
    assert failed["client_id"] == 0 and failed["stage"] == "train"
    assert "Traceback" in failed["error"] and "injected failure of client 0 in round 1" in failed["error"]
    assert record.dropped == [{"client_id": 2, "stage": "train", "reason": "no reply within the round timeout"}]
    assert [t["client_id"] for t in record.traffic if t["direction"] == "up"] == [1]
    row = record.row()
    assert row["failed"][0]["reason"].endswith("injected failure of client 0 in round 1")


def test_aggregate_rejects_non_finite_updates_and_keeps_the_model_below_min_clients(tiny_federation):
    grid, run, _ = started(tiny_federation, faults={"nan": [[1, 1]]}, min_clients=3)
    before = {k: v.clone() for k, v in run.global_state.items()}
    record = configure_round(run, 1)
    collect_updates(grid, run, record)
    aggregate_round(run, record)
    assert [c for c, _ in record.rejected] == [1] and "non-finite" in record.rejected[0][1]
    assert not record.aggregated and all(torch.equal(before[k], run.global_state[k]) for k in before)
    run.cfg.min_clients = 2
    aggregate_round(run, record)
    assert record.aggregated and any(not torch.equal(before[k], run.global_state[k]) for k in before)


def test_evaluate_and_record_write_the_row_and_the_checkpoint(tiny_federation, tmp_path):
    grid, run, _ = started(tiny_federation, checkpoint_dir=str(tmp_path))
    record = configure_round(run, 1)
    collect_updates(grid, run, record)
    aggregate_round(run, record)
    evaluate_round(run, record)
    assert 0.0 <= record.scores["oa"] <= 1.0
    row = record_round(run, record)
    assert row["test_oa"] == record.scores["oa"] and row["accepted"] == [0, 1, 2] and row["train_loss"] > 0
    assert row["bytes_up"] > 0 and row["bytes_down"] > 0 and run.history == [row]
    assert (tmp_path / "checkpoint.pt").is_file()


def test_exchange_relays_the_partner_outputs_untouched(tiny_split_federation):
    fed = tiny_split_federation
    codec = {"rank": 4, "quantize_bits": 8}
    grid, run, _ = started(fed, algorithm="feddiff", min_clients=2, client_data_dirs=[fed["features_dir"]],
                           exchange_compression=codec, compression=codec)
    record = configure_round(run, 1)
    assert record.sampled == [0, 1, 2, 3]
    exchange_features(grid, run, record)
    sent = {r.metadata.src_node_id - 100: r for r in grid.received if "codec" in r.content}
    site = {c: info["site"] for c, info in run.clients.items()}
    for cid, (arrays, _codec_record) in record.relayed.items():
        partner = next(p for p in sent if p != cid and site[p] == site[cid])
        assert arrays is sent[partner].content["arrays"]  # relayed as it came, never decoded
    # nothing patch- or feature-shaped went up: low-rank, 8-bit factors of the branch outputs only
    for reply in sent.values():
        for array in reply.content["arrays"].values():
            assert array.numpy().dtype == np.uint8 and array.numpy().ndim == 2
    collect_updates(grid, run, record)
    aggregate_round(run, record)
    assert record.aggregated and [u.client_id for u in record.updates] == [0, 1, 2, 3]
    ups = [t for t in record.traffic if t["payload"] == "features" and t["direction"] == "up"]
    assert len(ups) == 4 and all(t["bytes_sent"] < t["bytes_dense"] for t in ups)


def test_a_client_without_its_partner_is_dropped(tiny_split_federation):
    fed = tiny_split_federation
    grid, run, _ = started(fed, grid=FakeGrid(4, silent={(1, 1)}), algorithm="feddiff",
                           client_data_dirs=[fed["features_dir"]])
    record = configure_round(run, 1)
    exchange_features(grid, run, record)
    lost = {d["client_id"]: d["reason"] for d in record.dropped}
    partner_of_1 = next(c for c, i in run.clients.items() if c != 1 and i["site"] == run.clients[1]["site"])
    assert lost == {1: "no reply within the round timeout", partner_of_1: "its site partner delivered no features"}
    collect_updates(grid, run, record)
    assert sorted(u.client_id for u in record.updates) == sorted(set(range(4)) - {1, partner_of_1})


def _record(sampled, failed=(), dropped=(), rnd=1):
    record = RoundRecord(rnd, 1e-3, {}, list(sampled))
    record.failed = [{"client_id": c, "stage": "train", "error": f"Traceback ...\nValueError: {msg}"}
                     for c, msg in failed]
    record.dropped = [{"client_id": c, "stage": "train", "reason": "no reply"} for c in dropped]
    return record


def test_failure_watch_survives_transient_failures_and_stops_systematic_ones():
    clients = {0: {"modalities": ("hsi", "lidar")}, 1: {"modalities": ("hsi", "lidar")}, 2: {"modalities": ("hsi",)}}
    watch = FailureWatch(2, clients)
    watch.observe(_record([0, 1, 2], failed=[(0, "a")]))
    watch.observe(_record([0, 1, 2], failed=[(0, "b")]))  # a different error: not a repeat
    watch.observe(_record([0, 1, 2]))
    watch.observe(_record([1, 2], failed=[(1, "x")]))
    with pytest.raises(SystematicFailure, match=r"client 1 .* same error in 2 consecutive rounds") as raised:
        watch.observe(_record([0, 1, 2], failed=[(1, "x")]))
    assert "ValueError: x" in str(raised.value)
    # every multimodal client lost, each for its own reason, two rounds running
    watch = FailureWatch(2, clients)
    watch.observe(_record([0, 1, 2], failed=[(0, "a")], dropped=[1]))
    with pytest.raises(SystematicFailure, match=r"every sampled client holding hsi\+lidar \(\[0, 1\]\)"):
        watch.observe(_record([0, 1, 2], failed=[(1, "b")], dropped=[0]))
    FailureWatch(None, clients).observe(_record([0], failed=[(0, "a")]))  # switched off
    silent = _record([0])
    silent.failed = [{"client_id": 0, "stage": "train", "error": ""}]  # a client error without a message
    assert silent.row()["failed"] == [{"client_id": 0, "stage": "train", "reason": "no message"}]


def test_a_run_whose_client_keeps_raising_stops_with_its_traceback(tiny_federation):
    fed = tiny_federation
    cfg = config(fed, faults={"raise": [[1, 0], [2, 0]]})
    with pytest.raises(SystematicFailure, match="client 0") as raised:
        run_rounds(FakeGrid(3), cfg, fed["test"], 3)
    assert "Traceback" in str(raised.value) and "inject_faults" in str(raised.value)
    tolerant = run_rounds(
        FakeGrid(3), config(fed, faults={"raise": [[1, 0], [2, 0]]}, failure_tolerance=3), fed["test"], 3
    )
    assert [len(r["failed"]) for r in tolerant["history"]] == [1, 1, 0]


def test_loss_growth_by_hand():
    rows = [{"train_loss": v} for v in (3.0, 2.0, 2.5, 2.6, 2.9)]
    assert loss_growth(rows, 3) == 3 and loss_growth(rows, 4) == 0
    assert loss_growth(rows[:2], 1) == 0 and loss_growth([], 1) == 0
    wobble = [{"train_loss": v} for v in (0.516, 0.517, 0.520, 0.525)]  # +1.7 %: a converged run's noise
    assert loss_growth(wobble, 3) == 0 and loss_growth(wobble, 3, min_rise=0.01) == 3


def test_the_last_round_pools_the_batchnorm_statistics_of_the_final_model(tiny_federation):
    """Every client sends only its BatchNorm statistics of the final global weights; the pooled
    mean and variance of a first-layer BatchNorm are those of the union of the clients' pixels."""
    from fedrs.datasets import NpzDataset
    from fedrs.federated.algorithms import get_algorithm
    from fedrs.federated.local import norm_statistic_names

    fed = tiny_federation
    train = {"epochs": 1, "batch_size": 1000}  # one batch per client: its statistics are exact
    plain = run_rounds(FakeGrid(3), config(fed, num_rounds=2, train=train, statistics_pass=False), fed["test"], 3)
    pooled = run_rounds(FakeGrid(3), config(fed, num_rounds=2, train=train), fed["test"], 3)
    model = get_algorithm("fedavg").build_model(fed["spec"])
    statistics = norm_statistic_names(model)
    assert statistics and all(torch.equal(plain["state"][k], pooled["state"][k])
                              for k in plain["state"] if k not in statistics)  # nothing else changed
    assert any(not torch.equal(plain["state"][k], pooled["state"][k]) for k in statistics)
    assert [r["statistics_from"] for r in pooled["history"]] == [[], [0, 1, 2]]
    assert plain["history"][-1]["statistics_from"] == []
    assert pooled["history"][-1]["test_oa_before_statistics"] == plain["history"][-1]["test_oa"]
    sent = [t for t in pooled["traffic"] if t["payload"] == "statistics"]
    buffers = dict(model.named_buffers())
    assert [t["client_id"] for t in sent] == [0, 1, 2] and all(t["round"] == 2 for t in sent)
    assert all(t["bytes_dense"] == sum(buffers[k].numel() * buffers[k].element_size() for k in statistics)
               for t in sent)
    model.load_state_dict(pooled["state"])
    lidar = torch.cat([torch.as_tensor(NpzDataset(f"{fed['dir']}/client_{c:03d}.npz").load()["lidar"])
                       for c in range(3)])
    with torch.no_grad():
        conv = model.lidar_encoder.net[0](lidar.float())
    bn = model.lidar_encoder.net[1]
    assert torch.allclose(bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, conv.var(dim=(0, 2, 3)), rtol=5e-3)  # per client n − 1, not N − 1


def test_the_final_model_can_be_the_mean_of_the_last_rounds(tiny_federation, tmp_path):
    """average_last_rounds=2: the final weights are the mean of rounds 2 and 3's global models (the
    run itself is unchanged), also across an interruption; its BatchNorm statistics come from the pass."""
    from fedrs.federated.checkpoint import load_checkpoint
    from fedrs.federated.server import RunInterrupted

    fed = tiny_federation
    plain = dict(num_rounds=3, statistics_pass=False)
    with pytest.raises(RunInterrupted):
        run_rounds(FakeGrid(3), config(fed, **plain, checkpoint_dir=str(tmp_path / "a"), stop_after_round=2),
                   fed["test"], 3)
    second = load_checkpoint(str(tmp_path / "a"))["state"]
    third = run_rounds(FakeGrid(3), config(fed, **plain), fed["test"], 3)["state"]
    with pytest.raises(RunInterrupted):
        run_rounds(FakeGrid(3), config(fed, **plain, average_last_rounds=2, checkpoint_dir=str(tmp_path / "b"),
                                       stop_after_round=2), fed["test"], 3)
    averaged = run_rounds(FakeGrid(3), config(fed, **plain, average_last_rounds=2, checkpoint_dir=str(tmp_path / "b"),
                                              resume=True), fed["test"], 3)
    for name, value in averaged["state"].items():
        if torch.is_floating_point(value):
            assert torch.allclose(value, (second[name] + third[name]) / 2, atol=1e-6), name
    assert any(not torch.equal(averaged["state"][k], third[k]) for k in third)


@pytest.mark.parametrize("weighting", ["samples", "equal"])
def test_equal_weighting_counts_every_client_once(tiny_federation, weighting):
    from fedrs.federated.server import aggregate_round

    grid, run, _ = started(tiny_federation, weighting=weighting, statistics_pass=False)
    record = configure_round(run, 1)
    collect_updates(grid, run, record)
    # the IID partition is balanced: give the clients unequal pixel counts
    from dataclasses import replace

    record.updates = updates = [replace(u, num_samples=n) for u, n in zip(record.updates, (5, 20, 40), strict=True)]
    aggregate_round(run, record)
    name = next(k for k, v in run.global_state.items() if v.is_floating_point() and "running" not in k)
    weights = torch.tensor([1.0 if weighting == "equal" else float(u.num_samples) for u in updates],
                           dtype=torch.float64)
    expected = sum(w * u.state[name].double() for w, u in zip(weights / weights.sum(), updates, strict=True))
    torch.testing.assert_close(run.global_state[name].double(), expected, rtol=1e-6, atol=1e-7)


def test_an_unknown_weighting_is_refused(tiny_federation):
    with pytest.raises(ValueError, match="weighting is 'pixels'"):
        started(tiny_federation, weighting="pixels")
