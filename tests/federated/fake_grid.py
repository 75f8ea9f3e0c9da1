"""A Flower grid in one process: messages go straight to the real ClientApp handlers, each node
with its own Context (node config and state), so the server's round steps are tested without Ray
— as Flower tests its strategies with mock replies. What the server sent and received is kept."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedrs.federated import client_app

HANDLERS = {"query": client_app.describe, "query.exchange": client_app.exchange, "query.features": client_app.features,
            "train": client_app.train, "query.statistics": client_app.statistics,
            "query.calibration": client_app.calibration}


class FakeGrid(Grid):
    def __init__(self, num_nodes: int, silent: Iterable[tuple[int, int]] = ()):
        """``silent``: (round, partition id) pairs whose messages get no reply (a timeout)."""
        for key in ("_run_id", "_task_id", "_node_id"):  # what a Flower process sets for its task
            if getattr(TaskIdentity, key) is None:
                setattr(TaskIdentity, key, 1)
        self.contexts = {node: Context(run_id=1, node_id=node, node_config={"partition-id": node - 100},
                                       state=RecordDict(), run_config={})
                         for node in range(100, 100 + num_nodes)}
        self.silent = set(silent)
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if (int(msg.metadata.group_id), node - 100) in self.silent:
                continue
            try:
                reply = HANDLERS[msg.metadata.message_type](msg, self.contexts[node])
            except Exception as exc:  # what Flower does with a ClientApp exception
                reply = Message(Error(code=0, reason=f"{type(exc)}:<'{exc}'>"), reply_to=msg)
            self.received.append(reply)
            replies.append(reply)
        return replies

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    # the rest of the Grid interface is not used by the round loop
    def set_run(self, run):  # noqa: ANN001, D102
        raise NotImplementedError

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError

    def push_messages(self, messages):  # noqa: ANN001, D102
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: ANN001, D102
        raise NotImplementedError
