"""FedCMI's model (Fan et al., 2023, applied to HSI + LiDAR; ../shared/spec/fedcmi.md).

Per modality: a patch encoder (h or l, d-dimensional), a self-projector (s = P(h)) and an
infiltration projector (i = Q(h): features of one modality taught to carry what the other knows),
and one classifier shared by both projections. A fusion head scores the concatenation
[first, second] of two d-vectors; which pair depends on what a client holds:

- multimodal: fusion(s_H, s_L); HSI only: fusion(s_H, i_H); LiDAR only: fusion(i_L, s_L)
- zero-filled unimodal outputs for comparison: fusion(s_H, 0) and fusion(0, s_L).

Parameter names start with ``hsi_`` or ``lidar_`` for what a modality owns; ``fusion.`` is shared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from fedrs.config import from_mapping
from fedrs.models.fusion_cnn import HsiPatchEncoder, LidarPatchEncoder


def cmi_parameter_modality(name: str) -> str | None:
    for modality in ("hsi", "lidar"):
        if name.startswith(f"{modality}_"):
            return modality
    return None


@dataclass(frozen=True)
class CmiSpec:
    bands: int
    lidar_channels: int
    num_classes: int
    width: int = 32
    dim: int = 128
    projector: str = "linear"    # linear | mlp (three layers)
    norm: str = "batch"          # batch | group (no running statistics; what record-level DP needs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CmiSpec:
        return from_mapping(cls, d)


def _projector(dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim, dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.ReLU(inplace=True),
                             nn.Linear(dim, dim))
    raise ValueError(f"projector {kind!r}; expected 'linear' or 'mlp'")


class CrossModalInfiltrationNet(nn.Module):
    def __init__(self, spec: CmiSpec):
        super().__init__()
        self.spec = spec
        self.hsi_encoder = HsiPatchEncoder(spec.bands, spec.width, spec.dim, spec.norm)
        self.lidar_encoder = LidarPatchEncoder(spec.lidar_channels, max(8, spec.width // 2), spec.dim, spec.norm)
        self.hsi_self = _projector(spec.dim, spec.projector)
        self.hsi_infiltration = _projector(spec.dim, spec.projector)
        self.lidar_self = _projector(spec.dim, spec.projector)
        self.lidar_infiltration = _projector(spec.dim, spec.projector)
        self.hsi_classifier = nn.Linear(spec.dim, spec.num_classes)
        self.lidar_classifier = nn.Linear(spec.dim, spec.num_classes)
        self.fusion = nn.Linear(2 * spec.dim, spec.num_classes)

    def project(self, hsi: torch.Tensor | None = None, lidar: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Self and infiltration projections of whatever modalities are given."""
        out: dict[str, torch.Tensor] = {}
        if hsi is not None:
            h = self.hsi_encoder(hsi)
            out["s_hsi"], out["i_hsi"] = self.hsi_self(h), self.hsi_infiltration(h)
        if lidar is not None:
            lf = self.lidar_encoder(lidar)
            out["s_lidar"], out["i_lidar"] = self.lidar_self(lf), self.lidar_infiltration(lf)
        return out

    def fuse(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.fusion(torch.cat([first, second], dim=1))

    def fused_logits(self, z: dict[str, torch.Tensor], zero_fill: bool = False) -> torch.Tensor:
        """The client-form fusion for the modalities present in ``z`` (see module docstring)."""
        if "s_hsi" in z and "s_lidar" in z:
            return self.fuse(z["s_hsi"], z["s_lidar"])
        if "s_hsi" in z:
            return self.fuse(z["s_hsi"], torch.zeros_like(z["s_hsi"]) if zero_fill else z["i_hsi"])
        if "s_lidar" in z:
            return self.fuse(torch.zeros_like(z["s_lidar"]) if zero_fill else z["i_lidar"], z["s_lidar"])
        raise ValueError("CrossModalInfiltrationNet needs at least one modality")

    def forward(self, hsi: torch.Tensor | None = None, lidar: torch.Tensor | None = None,
                zero_fill: bool = False) -> torch.Tensor:
        return self.fused_logits(self.project(hsi, lidar), zero_fill)
