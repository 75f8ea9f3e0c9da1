"""Talking to the clients over a Flower grid: waiting for nodes, building messages, learning who
holds which partition, and reading what a reply says about sizes and errors."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {expected} Flower nodes connected within {timeout:.0f} s")
        time.sleep(0.1)
        nodes = list(grid.get_node_ids())
    return nodes


def make_message(content: dict[str, Any], settings: dict[str, Any], node: int, kind: str, rnd: int) -> Message:
    record = RecordDict({**content, "config": ConfigRecord({"settings": json.dumps(settings)})})
    return Message(record, dst_node_id=node, message_type=kind, group_id=str(rnd))


def discover_clients(grid: Grid, nodes: list[int], settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Ask every node which partition it holds: client id → {node, modalities, num_samples, site,
    validation_samples}."""
    replies = grid.send_and_receive([make_message({}, settings, n, "query", 0) for n in nodes])
    clients: dict[int, dict[str, Any]] = {}
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} could not load its partition: {reply.error.reason}")
        info = reply.content.config_records["info"]
        cid = int(str(info["client_id"]))
        if cid in clients:
            raise RuntimeError(f"two nodes hold the partition of client {cid}")
        clients[cid] = {"node": reply.metadata.src_node_id, "modalities": tuple(str(info["modalities"]).split(",")),
                        "num_samples": int(str(info["num_samples"])), "site": int(str(info.get("site", -1))),
                        "validation_samples": int(str(info.get("validation_samples", 0)))}
    return clients


def payload_counts(reply: Message) -> tuple[int, int]:
    """Bytes a client's payload would take dense, and as it was sent (what its reply reports)."""
    metrics = reply.content.metric_records["metrics"]
    return int(str(metrics.get("bytes_dense", 0))), int(str(metrics.get("bytes_sent", 0)))


def client_error(reason: str) -> str:
    """A client's error as Flower reports it (``<class '…'>:<'message'>``, possibly nested), unwrapped
    to the message — with the client's own traceback in it when the ClientApp sent one."""
    text = reason.replace("\\n", "\n")
    while (match := re.fullmatch(r"\s*<class '[^']*'>:<'(.*)'>\s*", text, re.S)) is not None:
        text = match.group(1)
    return text.strip()


def error_signature(error: str) -> str:
    """The line that names an error (its last non-empty line) with numbers masked: an error that
    repeats with another round, size or index in its message is the same error."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return re.sub(r"\d+", "#", lines[-1][:300]) if lines else ""
