"""Noticing when a run goes wrong: a training or validation loss that climbs round after round, and failures
that are systematic rather than transient (``FailureWatch``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedrs.federated.server.messaging import error_signature
from fedrs.federated.server.record import LOST_REPLY, RoundRecord


class SystematicFailure(RuntimeError):
    """Clients fail in a way that more rounds will not mend; the message carries their error."""


def loss_growth(history: list[dict[str, Any]], rounds: int, min_rise: float = 0.05, key: str = "train_loss") -> int:
    """For how many consecutive rounds, up to the last, the loss ``key`` has risen — when that is
    at least ``rounds`` rounds and the loss rose by at least ``min_rise`` (relative) over them; else 0.
    Noise-level wobbles of a converged run are not a divergence. A round without the loss (DP kept
    it home) ends the streak; for the validation loss pass only the rounds that were scored."""
    losses = [r.get(key) for r in history]
    grown = 0
    for before, after in zip(losses[-2::-1], losses[::-1], strict=False):
        if before is None or after is None or not after > before:
            break
        grown += 1
    if grown < rounds:
        return 0
    start, end = losses[-grown - 1], losses[-1]
    return grown if start and end / start - 1.0 >= min_rise else 0


@dataclass
class FailureWatch:
    """Stops a run whose failures are systematic: a client raising the same error in
    ``tolerance`` consecutive rounds it was sampled in, or every sampled client of one modality
    group (the clients holding the same modalities) failing or dropped in ``tolerance`` consecutive
    rounds. A single failure is survived; a bug is not averaged away."""

    tolerance: int | None
    clients: dict[int, dict[str, Any]]
    repeats: dict[int, tuple[str, int]] = field(default_factory=dict)  # client → (signature, count)
    group_streak: dict[tuple[str, ...], int] = field(default_factory=dict)

    def observe(self, record: RoundRecord) -> None:
        if not self.tolerance:
            return
        errors = {f["client_id"]: f["error"] for f in record.failed}
        self.watch_clients(record, errors)
        self.watch_groups(record, errors)

    def watch_clients(self, record: RoundRecord, errors: dict[int, str]) -> None:
        assert self.tolerance
        for cid in record.sampled:
            if cid not in errors:
                self.repeats.pop(cid, None)
                continue
            signature = error_signature(errors[cid])
            previous, count = self.repeats.get(cid, ("", 0))
            count = count + 1 if previous == signature else 1
            self.repeats[cid] = (signature, count)
            if count >= self.tolerance:
                raise SystematicFailure(
                    f"client {cid} ({'+'.join(self.clients[cid]['modalities'])}) failed with the same error in "
                    f"{count} consecutive rounds (failure_tolerance={self.tolerance}), up to round {record.round}; "
                    f"its error:\n{errors[cid]}"
                )

    def watch_groups(self, record: RoundRecord, errors: dict[int, str]) -> None:
        assert self.tolerance
        lost = errors.keys() | {d["client_id"] for d in record.dropped}
        groups: dict[tuple[str, ...], list[int]] = {}
        for cid in record.sampled:
            groups.setdefault(tuple(self.clients[cid]["modalities"]), []).append(cid)
        for group, members in groups.items():
            self.group_streak[group] = self.group_streak.get(group, 0) + 1 if all(c in lost for c in members) else 0
            if self.group_streak[group] >= self.tolerance:
                example = next((errors[c] for c in members if c in errors), LOST_REPLY)
                raise SystematicFailure(
                    f"every sampled client holding {'+'.join(group)} ({members}) failed or was dropped in "
                    f"{self.group_streak[group]} consecutive rounds (failure_tolerance={self.tolerance}), up to "
                    f"round {record.round}; the {'+'.join(group)} side of the model is not being trained. "
                    f"First error:\n{example}"
                )
