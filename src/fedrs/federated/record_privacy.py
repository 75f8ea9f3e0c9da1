"""Record-level differential privacy inside each organisation: DP-SGD (Abadi et al., CCS 2016) in
the local update, so that what an organisation sends — its weights every round, and in FedDiff its
relayed branch outputs — is (ε, δ)-DP with respect to any one of its training records.

The unit of privacy is **one training record: a labelled pixel's patch** (its P×P window of every
band and its label). A pixel also lies inside the windows of its training neighbours; a change to
one pixel's values changes up to P² records, and that is covered only through group privacy — a
much larger ε. The reports name the unit.

Each local step:

1. a batch drawn by **Poisson sampling** — every record independently with probability
   q = batch_size / n — from the OS's CSPRNG (``fedrs.federated.noise``): the amplification by
   subsampling holds only while the other parties cannot tell which records were in a batch, and
   every participant knows the run seed;
2. one gradient per record (the batch loss of that record alone, so any loss works; BatchNorm is
   refused: it mixes a batch's records, so a per-record gradient does not exist), each clipped to
   L2 norm ``clipping_norm`` C over the trained parameters;
3. the sum plus N(0, (σ·C)²) noise on every coordinate, divided by the expected batch size q·n.

The accountant: the RDP accountant of Opacus (as for client-level DP), E·⌈n / batch⌉ steps of the
subsampled Gaussian mechanism with (σ, q) per round the organisation takes part in; FedDiff's
relayed outputs add one Gaussian release per round (per-pixel clipping and noise of
``exchange_privacy``, no subsampling). ``deterministic_noise`` (tests only) draws batches and noise
from the run seed: such a run has no guarantee and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrs.config import from_mapping
from fedrs.federated.noise import Noise, gaussian, uniform

RECORD_UNIT = "training record (a labelled pixel's patch)"


def check_gaussian(label: str, noise_multiplier: float, clipping_norm: float, delta: float | None = None) -> None:
    """A Gaussian mechanism's settings, refused by name when they cannot work: C > 0, σ ≥ 0, δ in (0, 1)."""
    if not clipping_norm > 0:
        raise ValueError(f"{label}.clipping_norm must be > 0, got {clipping_norm}")
    if noise_multiplier < 0:
        raise ValueError(f"{label}.noise_multiplier must be ≥ 0, got {noise_multiplier}")
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"{label}.delta must lie in (0, 1), got {delta}")


@dataclass(frozen=True)
class RecordPrivacy:
    noise_multiplier: float         # σ: noise std in units of the per-record clipping norm
    clipping_norm: float            # C: the largest L2 norm of one record's gradient
    delta: float = 1e-5             # δ of the (ε, δ) reported
    deterministic_noise: bool = False  # tests only: batches and noise from the run seed — no privacy

    def __post_init__(self) -> None:
        check_gaussian("record_privacy", self.noise_multiplier, self.clipping_norm, self.delta)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecordPrivacy:
        return from_mapping(cls, d, label="record_privacy")


def sampling_rate(num_records: int, batch_size: int) -> float:
    """q: the probability that one record is in one step's batch."""
    return min(1.0, batch_size / max(num_records, 1))


def steps_per_round(num_records: int, batch_size: int, epochs: int) -> int:
    """Local steps of one round: ``epochs`` expected passes over the records."""
    return int(epochs) * max(1, -(-int(num_records) // int(batch_size)))


def poisson_batches(num_records: int, batch_size: int, epochs: int, generator: Noise
                    ) -> Iterator[np.ndarray]:
    """``steps_per_round`` batches, each record in each independently with probability q (a batch
    may be empty: its step is noise only, as the accountant assumes)."""
    q = sampling_rate(num_records, batch_size)
    for _ in range(steps_per_round(num_records, batch_size, epochs)):
        yield np.flatnonzero(uniform(num_records, generator).numpy() < q)


def refuse_batch_norm(model: nn.Module) -> None:
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise ValueError(f"record_privacy: the model has BatchNorm layers ({', '.join(norms[:3])}, …), which mix a "
                         "batch's records, so no per-record gradient exists to clip; set the model's norm: group")


def clipped_gradient_sum(params: list[torch.nn.Parameter], index: np.ndarray,
                         record_loss: Callable[[np.ndarray], torch.Tensor], clipping_norm: float
                         ) -> tuple[list[torch.Tensor], list[float], list[float]]:
    """Σ over the records of ``index`` of each record's gradient of ``record_loss`` clipped to
    ``clipping_norm`` (L2 over ``params``); also each record's gradient norm before clipping and its loss."""
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    norms, losses = [], []
    for i in index:
        loss = record_loss(np.asarray([i]))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True))
        norm = float(torch.cat([g.double().flatten() for g in grads]).norm())
        scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
        for t, g in zip(total, grads, strict=True):
            t.add_(g.double(), alpha=scale)
        norms.append(norm)
        losses.append(float(loss.detach()))
    return total, norms, losses


def noised_mean_gradient(total: list[torch.Tensor], cfg: RecordPrivacy, expected_batch: float,
                         generator: Noise) -> list[torch.Tensor]:
    """(Σ clipped gradients + N(0, (σ·C)²)) / expected batch size: DP-SGD's gradient estimate."""
    std = cfg.noise_multiplier * cfg.clipping_norm
    return [(t + gaussian(t.shape, generator) * std) / expected_batch
            for t in total]

