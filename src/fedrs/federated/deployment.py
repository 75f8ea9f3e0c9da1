"""The ServerApp for Flower's deployment engine (SuperLink + one SuperNode per organisation).

It runs any job of ``fedrs.federated.jobs`` — the same server code as the simulation. What the
job needs comes from one JSON settings file named in the run config (``settings-file``), written
by ``fedrs.federated.engine.run_on_deployment`` (Kedro with ``federation.engine: deployment``):

    {"job": "rounds", "federated": {... FederatedConfig ...}, "validation_patches": "/abs/validation.npz",
     "expected_nodes": 2, "output_dir": "/abs/run/output"}

Into ``output_dir`` it writes ``progress.json`` after every round, then ``result.pt`` (what the
job returned: for rounds the global state, history, traffic and clients), ``history.json`` (the
rounds, readable) and — last, each atomically — ``status.json`` ("completed", or "failed" with the
error). The ClientApp is ``fedrs.federated.client_app:app``; each SuperNode names its own partition
file in its node config (``partition-path``) and, for FedDiff, its feature store
(``feature-cache-dir``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from fedrs.datasets._files import atomic_path
from fedrs.federated.jobs import read_job

app = ServerApp()
# How often the server asks the SuperLink for the replies it waits on. Flower's deployment grid asks
# every 3 s, so every exchange of messages waited 1.5 s on average after its last reply had arrived —
# 11 exchanges in a tiny FedDiff run, every round of a real one.
REPLY_POLL_SECONDS = 0.2


class PromptGrid(Grid):
    """The deployment grid with replies collected as they arrive (every ``poll_seconds``); every
    other call goes to the grid Flower gave the ServerApp."""

    def __init__(self, grid: Grid, poll_seconds: float = REPLY_POLL_SECONDS):
        self.grid, self.poll_seconds = grid, poll_seconds

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            arrived = list(self.grid.pull_messages(list(waiting)))
            replies.extend(arrived)
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if waiting and deadline is not None and time.monotonic() >= deadline:
                break
            if waiting:
                time.sleep(self.poll_seconds)
        return replies

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(value, indent=1, default=str))


def run_from_settings(grid: Grid, settings: dict[str, Any]) -> dict[str, Any]:
    out = Path(settings["output_dir"])
    try:
        job = read_job(settings)
        result = job.run(grid, int(settings["expected_nodes"]),
                         on_round=lambda row: _write_json(out / "progress.json", row))
    except Exception as exc:
        _write_json(out / "status.json", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    with atomic_path(out / "result.pt", suffix=".pt") as tmp:
        torch.save(result, tmp)
    if "history" in result:
        _write_json(out / "history.json", {"job": job.label, "rounds": result["history"],
                                           "clients": result.get("clients", {})})
    _write_json(out / "status.json", {"status": "completed", "job": job.kind, "label": job.label})
    return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings_file = str(context.run_config.get("settings-file", ""))
    if not settings_file:
        raise ValueError(
            "run config 'settings-file' is empty; pass --run-config 'settings-file=\"/abs/settings.json\"'"
        )
    run_from_settings(PromptGrid(grid), json.loads(Path(settings_file).read_text()))
