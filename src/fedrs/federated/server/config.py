"""What a federated run is asked to do: ``FederatedConfig``, one per run, read from a parameter block."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from fedrs.config import from_mapping

# settings that do not change the result, so a checkpoint made with other values can be resumed
RESUMABLE = {"resume", "stop_after_round", "checkpoint_dir", "round_timeout", "node_wait_timeout", "faults",
             "failure_tolerance", "loss_growth_rounds", "validation", "validation_every"}


VALIDATION_MODES = ("server", "clients")


@dataclass
class FederatedConfig:
    algorithm: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    num_rounds: int = 20
    clients_per_round: int | None = None   # None: every eligible client
    min_clients: int = 2
    seed: int = 0
    partition_dir: str = ""
    round_timeout: float | None = 600.0    # seconds to wait for replies; None: wait for all
    lr_schedule: str = "cosine"            # per-round learning rate: cosine | constant
    outlier_factor: float = 10.0
    max_update_norm: float | None = None
    eval_samples: int | None = 4000        # validation pixels the server scores (seeded subset); None: all
    validation: str = "clients"            # who scores each round: clients (each its own validation pixels; the
                                           # server sums their confusion counts) | server (its copy of them;
                                           # stage 1's DDPMs, whose scores are no confusion counts)
    validation_every: int = 1              # score every N rounds (and the last); 0: the last round only
    failure_tolerance: int | None = 2      # consecutive rounds of the same failure that stop a run; None: never
    loss_growth_rounds: int = 3            # rounds of rising training loss that raise a warning
    checkpoint_dir: str | None = None
    resume: bool = False
    stop_after_round: int | None = None
    node_wait_timeout: float = 120.0
    faults: dict[str, Any] = field(default_factory=dict)  # test hooks: raise, nan (clients), lost (server)
    compression: dict[str, Any] | None = None  # codec settings for uploaded updates; None: dense
    exchange_compression: dict[str, Any] | None = None  # codec for exchanged features; None: dense
    downlink_compression: dict[str, Any] | None = None  # global weights as compressed deltas; None: dense
    client_data_dirs: list[str] = field(default_factory=list)  # more per-client files of the same name
    client_features: dict[str, Any] | None = None  # FedDiff: which stage-2 features each client reads from its store
    statistics_pass: bool = True  # after the last round, BatchNorm statistics of the final model from every client
    average_last_rounds: int = 0  # the final model: the mean of the last N rounds' global models (SWA); 0: the last
    privacy: dict[str, Any] | None = None  # client-level DP: clipping and Gaussian noise (fedrs.federated.privacy)
    exchange_privacy: dict[str, Any] | None = None  # FedDiff: per-pixel clipping and noise on the relayed outputs
    weighting: str = "samples"  # aggregation weights: samples (FedAvg) | equal (every client counts once)
    secure_aggregation: dict[str, Any] | None = None  # Flower's SecAgg+, one secure sum per modality group ({}: its
                                                      # defaults); None: off
    calibration: dict[str, Any] | None = None  # after the last round, the last layer retrained on virtual features
                                               # from the clients' class statistics (fedrs.federated.calibration)
    temperature: dict[str, Any] | None = None  # after the last round (and calibration), the logits divided by one T
                                               # fitted on the validation pixels (fedrs.federated.temperature)
    probe: dict[str, Any] | None = None  # stage 1: each round, a linear probe of the diffusion features
                                         # against the raw bands (fedrs.feddiff.probe)
    client_threads: int = 1  # PyTorch threads per client on either engine: the same bits from simulation and
                             # deployment (set the simulation's num_cpus_per_client to match)

    def __post_init__(self) -> None:
        if self.validation not in VALIDATION_MODES:
            raise ValueError(f"federated.validation is {self.validation!r}; expected one of {VALIDATION_MODES}")
        if self.validation_every < 0:
            raise ValueError(f"federated.validation_every is {self.validation_every}; expected 0 (the last round "
                             "only) or a positive number of rounds")

    def validation_due(self, rnd: int) -> bool:
        """Whether round ``rnd``'s global model is scored on the validation pixels."""
        return rnd == self.num_rounds or (self.validation_every > 0 and rnd % self.validation_every == 0)

    @property
    def secure(self) -> bool:
        return self.secure_aggregation is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FederatedConfig:
        return from_mapping(cls, d, label="federated config")

    def digest(self) -> str:
        relevant = {k: v for k, v in asdict(self).items() if k not in RESUMABLE}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def settings(self) -> dict[str, Any]:
        """What every message carries to the clients (the round and its learning rate are added)."""
        return {"algorithm": self.algorithm, "model": self.model, "train": self.train, "seed": self.seed,
                "partition_dir": self.partition_dir, "faults": self.faults, "compression": self.compression,
                "exchange_compression": self.exchange_compression, "client_data_dirs": self.client_data_dirs,
                "client_features": self.client_features, "privacy": self.privacy,
                "exchange_privacy": self.exchange_privacy, "secure_aggregation": self.secure_aggregation,
                "client_threads": self.client_threads}
