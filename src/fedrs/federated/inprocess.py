"""The in-process engine: a Flower grid whose messages go straight to the ClientApp's own handlers
in the caller's process, each node with its own ``Context`` (node config and state), one message
at a time. No Ray, no SuperLink: for debugging a job step by step, profiling it, and the pipeline
tests. Flower's two engines stay what runs experiments (``simulation``) and organisations
(``deployment``); a job gives the same result here as on them — the handlers, messages and node
state are theirs, only the transport is a function call."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedrs.federated import client_app

FIRST_NODE = 100  # node ids as a Flower grid would hand them out: not the partition ids
HANDLERS: dict[str, Callable[[Message, Context], Message]] = {
    "query": client_app.describe, "query.exchange": client_app.exchange, "query.features": client_app.features,
    "train": client_app.train, "query.statistics": client_app.statistics, "query.calibration": client_app.calibration,
    "query.probe": client_app.probe, "query.validation": client_app.validation,
}


class InProcessGrid(Grid):
    """Node ``FIRST_NODE + i`` holds partition ``i``; a handler that raises answers with an error
    message, as Flower's engines do."""

    def __init__(self, num_nodes: int):
        for key in ("_run_id", "_task_id", "_node_id"):  # what a Flower process sets for its task
            if getattr(TaskIdentity, key) is None:
                setattr(TaskIdentity, key, 1)
        self.contexts = {node: Context(run_id=1, node_id=node, node_config={"partition-id": node - FIRST_NODE},
                                       state=RecordDict(), run_config={})
                         for node in range(FIRST_NODE, FIRST_NODE + num_nodes)}

    def deliver(self, msg: Message) -> Message | None:
        """The reply of the message's node (None: no reply). The handlers seed torch's and NumPy's
        global generators, which a real node does in its own process: here the server's are put back
        afterwards, so the server draws what it would draw beside Flower's engines."""
        numpy_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                return HANDLERS[msg.metadata.message_type](msg, self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # what Flower does with a ClientApp exception
            return Message(Error(code=0, reason=f"{type(exc)}:<'{exc}'>"), reply_to=msg)
        finally:
            np.random.set_state(numpy_state)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [reply for reply in map(self.deliver, messages) if reply is not None]

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    # the rest of the Grid interface is not used by the jobs
    def set_run(self, run: Any) -> None:  # noqa: D102
        raise NotImplementedError

    @property
    def run(self) -> Any:  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise NotImplementedError
