"""The run around the steps: the history row and checkpoint of a round, a run stopped by a systematic failure."""

import pytest

from fedrs.federated.server.loop import record_round, run_rounds
from fedrs.federated.server.steps import aggregate_round, collect_updates, configure_round, evaluate_round
from fedrs.federated.server.watch import SystematicFailure
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config, started


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
