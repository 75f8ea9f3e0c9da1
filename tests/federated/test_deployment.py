"""The deployment engine's ServerApp body (``run_from_settings``) on an in-process grid: what it
leaves in the run folder when the job completes and when it fails (the Kedro node reads these)."""

import json

import pytest
import torch

from fedrs.federated.deployment import run_from_settings
from fedrs.federated.jobs import RoundsJob
from fedrs.federated.server.config import FederatedConfig
from tests.federated.fake_grid import FakeGrid


def _settings(fed, tmp_path, **overrides):
    cfg = FederatedConfig.from_dict({"algorithm": "fedavg", "model": fed["spec"], "num_rounds": 2, "min_clients": 1,
                                     "seed": 1, "partition_dir": fed["dir"], "eval_samples": 100,
                                     "train": {"epochs": 1, "batch_size": 8}, **overrides})
    out = tmp_path / "output"
    out.mkdir()
    return {**RoundsJob(cfg, fed["test"]).write(tmp_path), "expected_nodes": fed["num_clients"],
            "output_dir": str(out)}, out


def test_a_completed_job_leaves_its_result_history_and_status(tiny_federation, tmp_path):
    settings, out = _settings(tiny_federation, tmp_path)
    result = run_from_settings(FakeGrid(tiny_federation["num_clients"]), settings)
    assert json.loads((out / "status.json").read_text()) == {"status": "completed", "job": "rounds", "label": "fedavg"}
    assert json.loads((out / "progress.json").read_text())["round"] == 2
    history = json.loads((out / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2] and history["job"] == "fedavg"
    saved = torch.load(out / "result.pt", weights_only=False)
    assert all(torch.equal(saved["state"][k], result["state"][k]) for k in result["state"])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_failed_job_says_why_and_leaves_no_result(tiny_federation, tmp_path):
    settings, out = _settings(tiny_federation, tmp_path, min_clients=9)
    with pytest.raises(Exception, match="min_clients is 9"):
        run_from_settings(FakeGrid(tiny_federation["num_clients"]), settings)
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "min_clients is 9" in status["error"]
    assert not (out / "result.pt").exists()


class _SlowGrid:
    """A deployment grid stand-in: each reply becomes available after its own number of pulls."""

    def __init__(self, ready_after: dict[str, int]):
        self.ready_after, self.pulls, self.pushed = ready_after, 0, []

    def push_messages(self, messages):
        self.pushed.extend(messages)
        return list(self.ready_after)

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [i for i in message_ids if self.ready_after[i] <= self.pulls]
        return [type("Reply", (), {"metadata": type("Meta", (), {"reply_to_message_id": i})()})() for i in ready]


def test_replies_are_collected_as_they_arrive_and_the_timeout_is_kept():
    from fedrs.federated.deployment import PromptGrid

    slow = _SlowGrid({"a": 1, "b": 3})
    replies = PromptGrid(slow, poll_seconds=0.0).send_and_receive(["m1", "m2"])
    assert [r.metadata.reply_to_message_id for r in replies] == ["a", "b"] and slow.pulls == 3
    assert slow.pushed == ["m1", "m2"]
    never = _SlowGrid({"a": 1, "b": 10**9})  # one node never answers: back after the timeout with the other
    replies = PromptGrid(never, poll_seconds=0.0).send_and_receive(["m1", "m2"], timeout=0.0)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
