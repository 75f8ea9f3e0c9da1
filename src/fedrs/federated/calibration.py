"""Classifier calibration after federated training (CCVR: Luo et al., "No Fear of Heterogeneity:
Classifier Calibration for Federated Learning with Non-IID Data", NeurIPS 2021).

Why: on class-disjoint sites each client's last layer learns its own site's classes and the
average of those layers is biased against every class one site lacks (Houston: Highway, seen by
one site only, is predicted as Road or Parking lot). The features before that layer stay
separable — retraining only the last layer on every training pixel's features recovers the
centralised boundary. The server has no pixels, so each client sends the per-class count, sum and
sum of outer products of its features; the server pools them into one Gaussian per class, draws the
same number of virtual features from each, and retrains the last layer on them.

What the server learns without SecAgg+ or DP: each sending client's class histogram (of the classes
it sends) and each such class's feature mean and covariance over that client's pixels. With one
pixel the sums are its features; with two, the mean and scatter give both (up to which is which);
from three on they no longer pin down any single pixel without side knowledge (a party that knows
all but one of a class's pixels recovers the last from the sum — only DP stops that). So a client
withholds every class it holds fewer than ``min_client_pixels`` (default 5, never below 3 whatever
a server asks; a SuperNode may raise it with ``calibration-min-pixels``) pixels of, and with FedDiff
only one client per site sends (both hold the same fused features of the same pixels: two senders
would count every pixel twice, and a class of one real pixel would pass ``min_pixels``). FedDiff's
server has the side knowledge: it relays every pixel's branch outputs and holds the weights, so it
computes each pixel's features itself, and the class sums then tell it which pixel carries which
label (docs/privacy.md).

With protection (``client_statistics``): every pixel's features are first clipped to L2 norm
``feature_clip`` (R), so one pixel moves a class's count by 1, its sum by ≤ R and its outer-product
sum by ≤ R² (Frobenius). Under ``secure_aggregation`` the statistics enter one more SecAgg+ sum,
scaled by public numbers only (count / S, sum / (S·R), outer / (S·R²), S = the most pixels any
sender holds) to fit its fixed clipping range; the server learns the pooled sums and nothing of
one client's. Under record-level DP each client adds Gaussian noise of std σ·√3 (in those units:
σ·√3·R on a sum, σ·√3·R² on the outer products' upper triangle, mirrored) from its own CSPRNG —
the Gaussian mechanism with multiplier σ for one pixel, counted by the accountant — and withholds
nothing (whether a class is sent would depend on one pixel; the noise protects small classes).

Plain functions over tensors: the client's statistics, their pooling, and the retraining.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fedrs.config import from_mapping
from fedrs.federated.noise import Noise, gaussian

STATISTICS = ("count", "sum", "outer")
CLIENT_PIXELS_FLOOR = 3  # the fewest pixels of a class a client ever sends statistics of


@dataclass(frozen=True)
class CalibrationConfig:
    virtual_per_class: int = 1000  # features drawn from each class's Gaussian (fewer: the draw shows in the OA)
    steps: int = 300              # full-batch Adam steps on the last layer
    lr: float = 0.01
    ridge: float = 1.0e-4         # added to every covariance's diagonal, relative to its mean variance
    min_pixels: int = 2           # a class with fewer pooled pixels keeps no virtual features
    min_client_pixels: int = 5    # a client withholds the statistics of a class it holds fewer pixels of
    dense_exchange: bool = True   # FedDiff: the pass relays partner outputs uncoded, as the test pixels see them
    feature_clip: float | None = None  # R: each pixel's features clipped to this L2 norm (needed by SecAgg+ and DP)
    noise_multiplier: float = 0.0  # σ: record-level DP noise on a client's sums, std σ·√3 in units of (1, R, R²)

    def __post_init__(self) -> None:
        for name in ("virtual_per_class", "steps", "min_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"calibration: {name} {getattr(self, name)!r}; expected a positive integer")
        if int(self.min_client_pixels) < CLIENT_PIXELS_FLOOR:
            raise ValueError(f"calibration: min_client_pixels {self.min_client_pixels!r}; expected at least "
                             f"{CLIENT_PIXELS_FLOOR} (with two pixels of a class its sums give both pixels back)")
        if self.feature_clip is not None and not float(self.feature_clip) > 0:
            raise ValueError(f"calibration: feature_clip {self.feature_clip!r}; expected a positive L2 norm or null")
        if not float(self.noise_multiplier) >= 0:
            raise ValueError(f"calibration: noise_multiplier {self.noise_multiplier!r}; expected ≥ 0")
        if self.noise_multiplier > 0 and self.feature_clip is None:
            raise ValueError("calibration: noise_multiplier > 0 needs feature_clip (without a bound on one pixel's "
                             "features no noise scale protects it)")
        if not self.lr > 0 or self.ridge < 0:
            raise ValueError(f"calibration: lr {self.lr!r} and ridge {self.ridge!r}; expected lr > 0 and ridge ≥ 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CalibrationConfig:
        return from_mapping(cls, d or {}, label="calibration")


def class_feature_statistics(features: torch.Tensor, labels: torch.Tensor, num_classes: int
                             ) -> dict[str, torch.Tensor]:
    """Per class: pixel count, feature sum and sum of outer products (float64) — what a client sends."""
    z = features.detach().double().flatten(1)
    y = labels.long()
    onehot = F.one_hot(y, num_classes).double()  # [N, C]
    return {"count": onehot.sum(0), "sum": onehot.T @ z,
            "outer": torch.einsum("nc,ni,nj->cij", onehot, z, z)}


def clip_features(features: torch.Tensor, bound: float) -> torch.Tensor:
    """Each row (one pixel's features) scaled down to L2 norm ``bound`` where it is longer."""
    z = features.detach().double().flatten(1)
    norms = z.norm(dim=1, keepdim=True)
    return z * torch.clamp(bound / norms.clamp_min(1e-300), max=1.0)


def noised_statistics(stats: dict[str, torch.Tensor], bound: float, noise_multiplier: float,
                      generator: Noise) -> dict[str, torch.Tensor]:
    """``stats`` of features clipped to ``bound`` plus the Gaussian mechanism's noise for one pixel:
    std σ·√3 on the counts, σ·√3·R on the sums, σ·√3·R² on the outer products (drawn on the upper
    triangle and mirrored, so the release stays symmetric and its sensitivity is |z|² ≤ R²)."""
    std = noise_multiplier * 3 ** 0.5

    def gauss(shape: torch.Size, scale: float) -> torch.Tensor:
        return gaussian(shape, generator) * scale

    outer_noise = torch.triu(gauss(stats["outer"].shape, std * bound ** 2))
    outer_noise = outer_noise + torch.triu(outer_noise, diagonal=1).transpose(-1, -2)
    return {"count": stats["count"] + gauss(stats["count"].shape, std),
            "sum": stats["sum"] + gauss(stats["sum"].shape, std * bound), "outer": stats["outer"] + outer_noise}


def secure_scales(pixels: int, bound: float) -> dict[str, float]:
    """What each statistic is divided by before it enters a secure sum (public numbers only): with at
    most ``pixels`` pixels of features clipped to ``bound``, every scaled value lies in [−1, 1]
    (noise aside), well inside SecAgg+'s clipping range."""
    return {"count": float(pixels), "sum": float(pixels) * bound, "outer": float(pixels) * bound ** 2}


def client_statistics(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: CalibrationConfig,
                      minimum: int, noise: Noise | None = None) -> dict[str, torch.Tensor]:
    """What one client may send: the class statistics of its (clipped, with ``feature_clip``)
    features — noised with ``noise_multiplier`` (and then nothing withheld), else without the
    classes it holds fewer than ``minimum`` pixels of."""
    if cfg.feature_clip is not None:
        features = clip_features(features, float(cfg.feature_clip))
    stats = class_feature_statistics(features, labels, num_classes)
    if cfg.noise_multiplier > 0:
        if noise is None:
            raise ValueError("calibration: noise_multiplier > 0 but no noise generator was given")
        assert cfg.feature_clip is not None
        return noised_statistics(stats, float(cfg.feature_clip), cfg.noise_multiplier, noise)
    return withhold_small_classes(stats, minimum)


def client_minimum(requested: dict[str, Any] | None, node_floor: int = 0) -> int:
    """The fewest pixels of a class this client sends statistics of: what the server asks for, never
    below ``CLIENT_PIXELS_FLOOR`` (a request below it is refused — the client is not the server's to
    lower), raised to the organisation's own ``node_floor`` (its node config) where that is higher."""
    return max(CalibrationConfig.from_dict(requested).min_client_pixels, int(node_floor))


def withhold_small_classes(stats: dict[str, torch.Tensor], min_client_pixels: int) -> dict[str, torch.Tensor]:
    """``stats`` with every class of fewer than ``min_client_pixels`` pixels zeroed (count, sum and
    outer product alike): what a client may send."""
    keep = (stats["count"] >= min_client_pixels).double()
    return {"count": stats["count"] * keep, "sum": stats["sum"] * keep[:, None],
            "outer": stats["outer"] * keep[:, None, None]}


def pool_statistics(parts: list[dict[str, torch.Tensor]], keys: Sequence[str] = STATISTICS
                    ) -> dict[str, torch.Tensor]:
    """The sums over clients of each statistic in ``keys`` (statistics are additive)."""
    if not parts:
        raise ValueError("calibration: no client sent feature statistics")
    return {k: torch.stack([p[k].double() for p in parts]).sum(0) for k in keys}


def class_gaussians(pooled: dict[str, torch.Tensor], cfg: CalibrationConfig
                    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Mean and (ridge-regularised) covariance of every class with at least ``min_pixels`` pixels
    (a noised count: rounded down). A covariance that the ridge cannot make positive definite — only
    noised sums give one — has its negative eigenvalues raised to zero first."""
    out = {}
    for c, count in enumerate(pooled["count"].tolist()):
        n = float(int(count)) if cfg.noise_multiplier > 0 else count
        if n < max(cfg.min_pixels, 2):
            continue
        mean = pooled["sum"][c] / n
        cov = (pooled["outer"][c] - n * torch.outer(mean, mean)) / (n - 1)
        cov = (cov + cov.T) / 2
        scale = float(cov.diagonal().mean().clamp_min(1e-12))
        ridge = cfg.ridge * scale
        values, vectors = torch.linalg.eigh(cov)
        if float(values.min()) < -ridge / 2:
            cov = (vectors * values.clamp_min(0.0)) @ vectors.T
            scale = float(cov.diagonal().mean().clamp_min(1e-12))
            ridge = cfg.ridge * scale
        out[c] = mean, cov + ridge * torch.eye(len(mean), dtype=cov.dtype)
    return out


def virtual_features(gaussians: dict[int, tuple[torch.Tensor, torch.Tensor]], per_class: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` draws from each class's Gaussian (a balanced set), with their labels."""
    feats, labels = [], []
    for c in sorted(gaussians):
        mean, cov = gaussians[c]
        root = torch.linalg.cholesky(cov)
        eps = torch.randn(per_class, len(mean), generator=generator, dtype=torch.float64)
        feats.append(mean + eps @ root.T)
        labels.append(torch.full((per_class,), c, dtype=torch.long))
    return torch.cat(feats).float(), torch.cat(labels)


def calibrate_layer(weight: torch.Tensor, bias: torch.Tensor, pooled: dict[str, torch.Tensor],
                    cfg: CalibrationConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The last layer (a Linear's or 1×1 convolution's weight and bias) retrained from its current
    values by cross-entropy on virtual features; its new weight and bias and what was done."""
    gaussians = class_gaussians(pooled, cfg)
    if not gaussians:
        raise ValueError("calibration: no class has enough pooled pixels to draw virtual features from")
    dim = int(pooled["sum"].shape[1])
    if weight[0].numel() != dim:
        raise ValueError(f"calibration: the last layer takes {weight[0].numel()} inputs per class but the clients "
                         f"sent {dim}-dimensional features")
    generator = torch.Generator().manual_seed(seed)
    z, y = virtual_features(gaussians, cfg.virtual_per_class, generator)
    w = weight.detach().float().reshape(len(weight), dim).clone().requires_grad_(True)
    b = bias.detach().float().clone().requires_grad_(True)
    # a class nobody sent statistics of keeps its row: with no virtual feature of its own, training
    # would only push its logit down everywhere and the class would never be predicted again
    absent = torch.tensor([c not in gaussians for c in range(len(weight))])
    optimiser = torch.optim.Adam([w, b], lr=cfg.lr)
    with torch.no_grad():
        before = float(F.cross_entropy(z @ w.T + b, y))
    for _ in range(cfg.steps):
        optimiser.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y)
        loss.backward()
        if absent.any():
            assert w.grad is not None and b.grad is not None
            w.grad[absent] = 0.0
            b.grad[absent] = 0.0
        optimiser.step()
    with torch.no_grad():
        after = float(F.cross_entropy(z @ w.T + b, y))
    report = {"classes": float(len(gaussians)), "virtual_features": float(len(y)), "loss_before": before,
              "loss_after": after}
    return w.detach().reshape(weight.shape).to(weight.dtype), b.detach().to(bias.dtype), report
