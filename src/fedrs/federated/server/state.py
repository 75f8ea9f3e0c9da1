"""What the round steps share across rounds (``RunState``), and the seeded test subset they score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedrs.federated.aggregation import State
from fedrs.federated.algorithm_base import Algorithm
from fedrs.federated.local import derive_seed
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.downlink import Downlink

if TYPE_CHECKING:
    from fedrs.federated.server.aggregators import Aggregator
    from fedrs.federated.server.protocol import RoundProtocol


@dataclass
class RunState:
    """Everything the round steps share across rounds."""

    cfg: FederatedConfig
    algorithm: Algorithm
    aggregator: Aggregator
    protocol: RoundProtocol
    model: torch.nn.Module
    global_state: State
    rng: np.random.Generator
    clients: dict[int, dict[str, Any]]
    eligible: list[int]
    validation: dict[str, Any]  # the pixels the server scores each round on (a seeded subset of the validation
                                # split); with validation: clients, their class names only
    downlink: Downlink
    history: list[dict[str, Any]] = field(default_factory=list)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    tail: State | None = None  # running mean of the global models of the rounds averaged so far
    tail_rounds: int = 0
    privacy_releases: list[tuple[float, float]] = field(default_factory=list)  # (σ, sampling rate) per DP aggregate
    record_releases: dict[int, list[tuple[float, float, int]]] = field(default_factory=dict)  # client → (σ, q, steps)
    # validation: clients — the last model the clients scored (its digest), its scores and who scored
    last_scored: tuple[str, dict[str, float], dict[str, float]] | None = None

    @property
    def per_round(self) -> int:
        return min(self.cfg.clients_per_round or len(self.eligible), len(self.eligible))


def eval_subset(patches: dict[str, Any], n: int | None, seed: int) -> dict[str, Any]:
    if "labels" not in patches:  # the clients hold the validation pixels
        return patches
    total = len(patches["labels"])
    if not n or n >= total:
        return patches
    idx = np.sort(np.random.default_rng(derive_seed(seed, 7_777)).choice(total, n, replace=False))
    return {k: (v[idx] if isinstance(v, np.ndarray) and len(v) == total else v) for k, v in patches.items()}
