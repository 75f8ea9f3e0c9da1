"""What a round does around the generic steps, per algorithm: whom it samples, what happens before
the clients are asked for their updates, what an update request carries, and how many statistics
passes the final model needs. ``RoundProtocol`` is the plain one (uniform sampling, the weights
travel with the request); an algorithm names its protocol (``Algorithm.round_protocol``) and the
loop looks it up once per run — FedDiff's partner relay (``fedrs.feddiff.relay``) is the other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.serverapp import Grid

from fedrs.federated.record_privacy import RECORD_UNIT

if TYPE_CHECKING:
    from fedrs.federated.server.record import RoundRecord
    from fedrs.federated.server.state import RunState


class RoundProtocol:
    """Uniform client sampling; nothing before the updates; one statistics pass."""

    statistics_passes = 1
    # what client-level DP protects, and how far removing one such unit moves the released sums in
    # units of the clipping norm C: one organisation, whose clipped update is at most C
    privacy_unit = "organisation"
    sensitivity = 1.0
    record_unit = RECORD_UNIT  # what record-level DP protects (fedrs.federated.record_privacy)

    def sample(self, rng: np.random.Generator, eligible: list[int], k: int,
               clients: dict[int, dict[str, Any]]) -> list[int]:
        """``k`` of the eligible clients, uniformly (seeded by the run's generator)."""
        return sorted(int(c) for c in rng.choice(eligible, size=k, replace=False))

    def record_groups(self, run: RunState) -> list[list[int]]:
        """Organisations whose records are the same pixels, whose record-level budgets compose: each alone."""
        return [[c] for c in run.eligible]

    def before_updates(self, grid: Grid, run: RunState, record: RoundRecord) -> None:
        """Runs after the downloads are encoded and before the update requests go out."""

    def pixel_senders(self, run: RunState, record: RoundRecord) -> list[int]:
        """Who of a pass's clients sends what is summed over pixels (calibration's class statistics,
        validation's counts): each pixel once."""
        return list(record.sampled)

    def update_content(self, record: RoundRecord, cid: int) -> dict[str, Any]:
        """What the update request to ``cid`` carries: its download of the global weights."""
        return dict(record.downloads[cid].content)
