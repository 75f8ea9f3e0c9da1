"""The run around the steps: the history row and checkpoint of a round, a run stopped by a systematic
failure, kill and resume against an uninterrupted run, too few updates, compressed traffic."""

import pytest
import torch

from fedrs.federated.server.loop import RunInterrupted, record_round, run_rounds
from fedrs.federated.server.steps import aggregate_round, collect_updates, configure_round
from fedrs.federated.server.validation import evaluate_round
from fedrs.federated.server.watch import SystematicFailure
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config, started


def test_evaluate_and_record_write_the_row_and_the_checkpoint(tiny_federation, tmp_path):
    grid, run, _ = started(tiny_federation, checkpoint_dir=str(tmp_path))
    record = configure_round(run, 1)
    collect_updates(grid, run, record)
    aggregate_round(run, record)
    evaluate_round(grid, run, record)
    assert 0.0 <= record.scores["oa"] <= 1.0
    row = record_round(run, record)
    assert row["val_oa"] == record.scores["oa"] and row["accepted"] == [0, 1, 2] and row["train_loss"] > 0
    assert row["bytes_up"] > 0 and row["bytes_down"] > 0 and run.history == [row]
    assert (tmp_path / "checkpoint.pt").is_file()


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


def test_too_few_updates_keep_the_global_model(tiny_federation):
    cfg = config(tiny_federation, num_rounds=1, min_clients=3, faults={"raise": [[1, 2]]})
    result = run_rounds(FakeGrid(3), cfg, tiny_federation["test"], 3)
    assert result["history"][0]["aggregated"] is False


def test_kill_and_resume_matches_an_uninterrupted_run(tiny_federation, tmp_path):
    test = tiny_federation["test"]
    straight = run_rounds(FakeGrid(3), config(tiny_federation, checkpoint_dir=str(tmp_path / "a")), test, 3)
    with pytest.raises(RunInterrupted):
        run_rounds(FakeGrid(3), config(tiny_federation, checkpoint_dir=str(tmp_path / "b"), stop_after_round=2),
                   test, 3)
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed = run_rounds(FakeGrid(3), config(tiny_federation, checkpoint_dir=str(tmp_path / "b"), resume=True), test, 3)
    assert [r["round"] for r in resumed["history"]] == [1, 2, 3]
    assert [r["sampled"] for r in resumed["history"]] == [r["sampled"] for r in straight["history"]]
    assert resumed["history"][-1]["val_oa"] == straight["history"][-1]["val_oa"]
    for key, tensor in straight["state"].items():
        assert torch.equal(tensor, resumed["state"][key]), key


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_federation, tmp_path):
    from fedrs.federated.checkpoint import save_checkpoint

    save_checkpoint(
        tmp_path, {"round": 1, "config_digest": "0000", "state": {}, "history": [], "traffic": [], "rng": {}}
    )
    cfg = config(tiny_federation, checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(RuntimeError, match="made with other settings"):
        run_rounds(FakeGrid(3), cfg, tiny_federation["test"], 3)


def test_compressed_uploads_and_downloads_send_fewer_bytes_and_still_learn(tiny_federation):
    codec = {"rank": 2, "quantize_bits": 8}
    cfg = config(
        tiny_federation, num_rounds=3, compression=codec, downlink_compression=codec, faults={"raise": [[2, 1]]}
    )
    result = run_rounds(FakeGrid(3), cfg, tiny_federation["test"], 3)
    rounds = result["history"]
    assert all(r["bytes_up"] * 2 < r["bytes_up_dense"] for r in rounds)
    ups = [t for t in result["traffic"] if t["direction"] == "up" and t["payload"] == "weights"]
    assert all(t["bytes_sent"] < t["bytes_dense"] for t in ups)
    downs: dict = {}  # each round's training download (the last round's statistics pass downloads again)
    for t in result["traffic"]:
        if t["direction"] == "down":
            downs.setdefault((t["round"], t["client_id"]), t)
    # round 1 is dense (nothing held yet); then deltas — except for client 1, which failed in round 2
    assert all(downs[(1, c)]["bytes_sent"] == downs[(1, c)]["bytes_dense"] for c in range(3))
    assert downs[(2, 0)]["bytes_sent"] * 2 < downs[(2, 0)]["bytes_dense"]
    assert downs[(3, 1)]["bytes_sent"] == downs[(3, 1)]["bytes_dense"]
    assert downs[(3, 2)]["bytes_sent"] * 2 < downs[(3, 2)]["bytes_dense"]
    assert [r["accepted"] for r in rounds] == [[0, 1, 2], [0, 2], [0, 1, 2]]
    assert rounds[-1]["val_oa"] > 1.5 / tiny_federation["spec"]["num_classes"]  # well above chance
