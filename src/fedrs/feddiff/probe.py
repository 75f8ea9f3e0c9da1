"""What a diffusion model knows about the classes, each round of stage 1: a linear probe on its
features against the same probe on the raw patch, trained on the clients' training pixels and
scored on the validation pixels.

The probe is linear discriminant analysis (class means, one shared covariance), because its
training needs only per-class counts, sums and outer-product sums — what each client sends, as
calibration's statistics travel (``fedrs.federated.calibration``: classes a client holds fewer than
``min_client_pixels`` of stay home) — and never a pixel. Inputs, each averaged over the U-Net's
input positions: ``raw`` (the patch's bands at the U-Net size) and ``t<k>`` (the middle-block
features at timestep k, noise seeded as stage 2 seeds it). A diffusion feature earns its place when
its probe beats ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedrs.config import from_mapping
from fedrs.federated.calibration import (
    CLIENT_PIXELS_FLOOR,
    STATISTICS,
    class_feature_statistics,
    withhold_small_classes,
)
from fedrs.metrics import classification_report


@dataclass(frozen=True)
class ProbeConfig:
    timesteps: tuple[int, ...] = (5, 50)
    every: int = 1                 # probe every k-th round (and always the last)
    ridge: float = 1e-3            # added to the shared covariance's diagonal, relative to its mean variance
    min_client_pixels: int = 5     # a client withholds the statistics of a class it holds fewer pixels of

    def __post_init__(self) -> None:
        if not self.timesteps or int(self.every) < 1 or self.ridge < 0:
            raise ValueError(f"probe: timesteps {self.timesteps!r}, every {self.every!r}, ridge {self.ridge!r}; "
                             "expected at least one timestep, every ≥ 1 and ridge ≥ 0")
        if int(self.min_client_pixels) < CLIENT_PIXELS_FLOOR:
            raise ValueError(f"probe: min_client_pixels {self.min_client_pixels!r}; expected at least "
                             f"{CLIENT_PIXELS_FLOOR} (with two pixels of a class its sums give both pixels back)")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ProbeConfig:
        return from_mapping(cls, d or {}, label="probe", tuples=("timesteps",))

    def due(self, rnd: int, last: int) -> bool:
        return rnd % int(self.every) == 0 or rnd == last


def probe_statistics(inputs: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int, minimum: int
                     ) -> dict[str, torch.Tensor]:
    """What a client sends: ``<input>.count|sum|outer`` per probe input, small classes withheld."""
    out = {}
    for name, values in inputs.items():
        stats = withhold_small_classes(class_feature_statistics(values, labels, num_classes), minimum)
        out.update({f"{name}.{k}": v for k, v in stats.items()})
    return out


def split_statistics(pooled: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``<input>.<statistic>`` → {input: {statistic: tensor}}."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in pooled.items():
        name, stat = key.rsplit(".", 1)
        if stat in STATISTICS:
            out.setdefault(name, {})[stat] = value
    return out


def lda(stats: dict[str, torch.Tensor], ridge: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights [C, d], biases [C] and the classes present (≥ 2 pooled pixels) of the LDA classifier
    from pooled class statistics: class means, the within-class covariance they share, class priors."""
    count = stats["count"].double()
    present = count >= 2
    n = count[present]
    means = stats["sum"].double()[present] / n[:, None]
    scatter = (stats["outer"].double()[present] - n[:, None, None] * means[:, :, None] * means[:, None, :]).sum(0)
    cov = scatter / max(float(n.sum()) - len(n), 1.0)
    cov = (cov + cov.T) / 2
    cov = cov + ridge * float(cov.diagonal().mean().clamp_min(1e-12)) * torch.eye(len(cov), dtype=cov.dtype)
    weights = torch.linalg.solve(cov, means.T).T  # Σ⁻¹ μ_c
    biases = -0.5 * (weights * means).sum(1) + torch.log(n / n.sum())
    return weights, biases, torch.nonzero(present).flatten()


def probe_scores(pooled: dict[str, torch.Tensor], validation: dict[str, torch.Tensor], labels: np.ndarray,
                 num_classes: int, ridge: float) -> dict[str, float]:
    """Validation OA of the LDA probe of every input the clients sent statistics of."""
    scores = {}
    for name, stats in sorted(split_statistics(pooled).items()):
        if name not in validation or int((stats["count"] >= 2).sum()) < 2:
            continue
        weights, biases, classes = lda(stats, ridge)
        logits = validation[name].double() @ weights.T + biases
        predicted = classes[logits.argmax(1)].numpy()
        scores[name] = float(classification_report(np.asarray(labels), predicted, num_classes)["oa"])
    return scores
