"""The round steps one at a time (configure, collect, aggregate, evaluate), against a fake grid that calls
the real ClientApp."""

import pytest
import torch

from fedrs.federated.server.loop import run_rounds
from fedrs.federated.server.steps import aggregate_round, collect_updates, configure_round
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config, started


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


def test_the_final_model_can_be_the_mean_of_the_last_rounds(tiny_federation, tmp_path):
    """average_last_rounds=2: the final weights are the mean of rounds 2 and 3's global models (the
    run itself is unchanged), also across an interruption; its BatchNorm statistics come from the pass."""
    from fedrs.federated.checkpoint import load_checkpoint
    from fedrs.federated.server.loop import RunInterrupted

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
    from fedrs.federated.server.steps import aggregate_round

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
