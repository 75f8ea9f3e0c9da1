"""The in-process grid (``fedrs.federated.inprocess``) with what the server-side tests need beside
it: messages that get no reply (a timeout), and a record of what was sent and received."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message

from fedrs.federated.inprocess import FIRST_NODE, InProcessGrid


class FakeGrid(InProcessGrid):
    def __init__(self, num_nodes: int, silent: Iterable[tuple[int, int]] = ()):
        """``silent``: (round, partition id) pairs whose messages get no reply (a timeout)."""
        super().__init__(num_nodes)
        self.silent = set(silent)
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def deliver(self, msg: Message) -> Message | None:
        self.sent.append(msg)
        if (int(msg.metadata.group_id), msg.metadata.dst_node_id - FIRST_NODE) in self.silent:
            return None
        reply = super().deliver(msg)
        assert reply is not None
        self.received.append(reply)
        return reply
