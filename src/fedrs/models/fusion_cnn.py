"""Two-branch fusion CNN (HSI and LiDAR patch encoders, concatenation fusion, classifier) and its
unimodal variants — the baselines every federated algorithm is compared with.

Parameter names start with the modality that owns them (``hsi_encoder.``, ``lidar_encoder.``);
everything else is shared. Modality-aware aggregation reads ownership from these prefixes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from fedrs.models.norms import norm_layer

MODALITY_PREFIXES = {"hsi_encoder.": "hsi", "lidar_encoder.": "lidar"}


def parameter_modality(name: str) -> str | None:
    """The modality owning a parameter, or None for shared (fusion/classifier) parameters."""
    for prefix, modality in MODALITY_PREFIXES.items():
        if name.startswith(prefix):
            return modality
    return None


class PatchEncoder(nn.Module):
    """Small CNN for a [N, C, P, P] patch → [N, dim] vector.

    The output joins the feature at the centre pixel (the pixel being classified) with the average
    over the window (its context); pooling alone blurs object borders into neighbouring classes.
    """

    def __init__(self, in_channels: int, width: int, dim: int, norm: str = "batch"):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), norm_layer(norm, width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), norm_layer(norm, width), nn.ReLU(inplace=True),
        )
        self.project = nn.Sequential(nn.Linear(2 * width, dim), norm_layer(norm, dim, dims=1), nn.ReLU(inplace=True))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        centre = maps[:, :, maps.shape[2] // 2, maps.shape[3] // 2]
        return self.project(torch.cat([centre, maps.mean(dim=(2, 3))], dim=1))


class HsiPatchEncoder(PatchEncoder):
    """Spectral 1×1 reduction first: HSI patches have tens to hundreds of bands."""

    def __init__(self, bands: int, width: int, dim: int, norm: str = "batch"):
        super().__init__(width, width, dim, norm)
        self.reduce = nn.Sequential(nn.Conv2d(bands, width, 1), norm_layer(norm, width), nn.ReLU(inplace=True))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.reduce(x))


class LidarPatchEncoder(PatchEncoder):
    pass


@dataclass(frozen=True)
class FusionSpec:
    bands: int
    lidar_channels: int
    num_classes: int
    modalities: tuple[str, ...] = ("hsi", "lidar")
    width: int = 32
    dim: int = 64
    dropout: float = 0.2
    norm: str = "batch"   # batch | group (no running statistics; what record-level DP needs)

    def to_dict(self) -> dict:
        return {**asdict(self), "modalities": list(self.modalities)}

    @classmethod
    def from_dict(cls, d: dict) -> FusionSpec:
        return cls(**{**d, "modalities": tuple(d.get("modalities", ("hsi", "lidar")))})


class FusionCNN(nn.Module):
    """Encoders for the modalities in ``spec.modalities``, concatenated, then a classifier.

    A modality that is absent at call time (an HSI-only client, or an ablation) contributes a zero
    feature vector, so one architecture serves multimodal and unimodal clients alike.
    """

    def __init__(self, spec: FusionSpec):
        super().__init__()
        self.spec = spec
        if "hsi" in spec.modalities:
            self.hsi_encoder = HsiPatchEncoder(spec.bands, spec.width, spec.dim, spec.norm)
        if "lidar" in spec.modalities:
            self.lidar_encoder = LidarPatchEncoder(spec.lidar_channels, max(8, spec.width // 2), spec.dim, spec.norm)
        fused = spec.dim * len(spec.modalities)
        self.classifier = nn.Sequential(
            nn.Dropout(spec.dropout),
            nn.Linear(fused, spec.dim),
            nn.ReLU(inplace=True),
            nn.Linear(spec.dim, spec.num_classes),
        )

    def forward(self, hsi: torch.Tensor | None = None, lidar: torch.Tensor | None = None) -> torch.Tensor:
        ref = hsi if hsi is not None else lidar
        if ref is None:
            raise ValueError("FusionCNN needs at least one modality")
        parts = []
        for modality, x in (("hsi", hsi), ("lidar", lidar)):
            if modality not in self.spec.modalities:
                continue
            encoder = getattr(self, f"{modality}_encoder")
            parts.append(encoder(x) if x is not None else ref.new_zeros(ref.shape[0], self.spec.dim))
        return self.classifier(torch.cat(parts, dim=1))
