"""The global weights on their way down: dense, or compressed deltas against what each client holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord

from fedrs.federated.aggregation import State
from fedrs.federated.codec import CodecConfig, ErrorFeedback
from fedrs.federated.wire import pack_exact, pack_tensors, payload_bytes, unpack_tensors


@dataclass
class Downlink:
    """What the server believes each client holds, so it can send compressed deltas against it."""

    codec: CodecConfig | None
    references: dict[int, tuple[int, State]] = field(default_factory=dict)
    feedback: dict[int, ErrorFeedback] = field(default_factory=dict)

    def encode(self, cid: int, state: State, rnd: int, exact: bool = False, aside: bool = False
               ) -> tuple[dict[str, Any], int, int, State]:
        """Records to send, dense bytes, bytes as sent, and the weights the client will decode.
        ``exact``: the client must hold exactly ``state`` — only the tensors that changed since its
        last download travel, raw (nothing goes through the codec). ``aside``: the client scores
        these weights and keeps training from its copy — the reference and the error feedback stay
        as they were (coded: through a copy of the feedback)."""
        if self.codec is None or cid not in self.references:
            if not aside:
                self.references[cid] = (rnd, state)
            size = payload_bytes(state)
            return {"arrays": ArrayRecord.from_torch_state_dict(state)}, size, size, state
        ref_round, reference = self.references[cid]
        if exact:
            arrays, consts, dense, sent = pack_exact(state, reference)
        else:
            feedback = self.feedback.setdefault(cid, ErrorFeedback())
            if aside:
                feedback = ErrorFeedback.from_state(feedback.state())
            arrays, consts, dense, sent = pack_tensors(state, self.codec, reference, feedback)
        decoded = unpack_tensors(arrays, consts, reference)  # bit-identical to what the client decodes
        if not aside:
            self.references[cid] = (rnd, decoded)
        content = {"arrays": arrays, "down_codec": consts, "reference": ConfigRecord({"round": ref_round})}
        return content, dense, sent, decoded

    def forget(self, cid: int) -> None:
        """A client that failed may not hold what we think: its next download goes dense."""
        self.references.pop(cid, None)
        self.feedback.pop(cid, None)
