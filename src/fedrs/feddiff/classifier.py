"""FedDiff's dual-branch fusion classifier with bilateral connections (../shared/spec/feddiff.md).

Per modality m (separate weights):
- patch CNN on the 8×8 patch: conv3×3→16, BN, ReLU; conv1×1→32, BN, maxpool 2, ReLU;
  conv3×3→64, BN, ReLU (the "third layer", 4×4); conv1×1→128, BN, maxpool 2, ReLU → cnn_m (128×2×2);
- diffusion stem on the diffusion features: conv3×3→512, BN, ReLU; conv1×1→256, BN, ReLU (4×4);
- diffusion-enhanced path: concat(third layer, stem) → conv1×1→128, BN, maxpool 2, ReLU → diff_m.
Fusion: gated FR blocks; j1 = FR(cnn_H + diff_L, cnn_L + diff_H) is the bilateral connection,
j2 = FR(cnn_H, diff_H), j3 = FR(diff_L, cnn_L); three heads give o1 (the prediction), o2, o3.

Ablations build only what they train (so nothing dead is trained, compressed or sent):
``use_diffusion=False`` has no diffusion stem (the enhanced path sees only the CNN's third layer: a
FedFusion-like model); ``diffusion_modalities=("lidar",)`` keeps the stem on the LiDAR branch alone
(the HSI branch as without diffusion: on real Houston spectra the HSI DDPM's features carry less
than the raw bands, docs/houston-dev.md); ``bilateral=False`` has no FR1 and uses j1 = j2 + j3 (no cross-modal mixing
of CNN and diffusion paths); ``modalities=("hsi",)`` or ``("lidar",)`` keeps one branch, its own FR
block (j2 or j3) and head — the single-modality FedDiff.

A branch with a diffusion stem refuses to run without its diffusion features: silently
standing zeros in for them would score a different model than the one trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedrs.config import from_mapping
from fedrs.models.norms import NORMS, norm_layer


@dataclass(frozen=True)
class FedDiffSpec:
    hsi_channels: int
    lidar_channels: int
    hsi_feature_channels: int      # diffusion feature channels (2C × number of timesteps)
    lidar_feature_channels: int
    num_classes: int
    use_diffusion: bool = True
    diffusion_modalities: tuple[str, ...] = ("hsi", "lidar")  # the branches with a diffusion stem (stage 1's DDPMs)
    bilateral: bool = True
    modalities: tuple[str, ...] = ("hsi", "lidar")  # one modality: its branch, FR block and head only
    timesteps: tuple[int, ...] = ()    # the diffusion features' timesteps and noise seed (stage 2)
    feature_seed: int = 0
    unet_size: int = 8                 # patch side the branches see (the U-Net's input size)
    norm: str = "batch"                # batch (FedFusion's code) | group (no running statistics)
    centre_path: bool = False          # add the centre pixel's own features to cnn_m
    spectral_stem: int = 0             # K > 0: a 1×1 convolution to K channels in front of the HSI branch
    dropout: float = 0.0               # p > 0: dropout on the fused maps j1, j2, j3 before their heads (training only)

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FedDiff classifier dropout {self.dropout}; expected a probability in [0, 1)")
        if self.spectral_stem < 0:
            raise ValueError(f"FedDiff classifier spectral_stem {self.spectral_stem}; expected 0 (none) or a "
                             "number of channels > 0")
        unknown = set(self.diffusion_modalities) - {"hsi", "lidar"}
        if unknown:
            raise ValueError(f"FedDiff classifier diffusion_modalities {list(self.diffusion_modalities)}: "
                             f"{sorted(unknown)} unknown; expected a subset of ['hsi', 'lidar']")

    def diffuses(self, modality: str) -> bool:
        """Whether ``modality``'s branch has a diffusion stem and so needs that modality's features."""
        return self.use_diffusion and modality in self.diffusion_modalities

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FedDiffSpec:
        return from_mapping(cls, d, tuples=("modalities", "timesteps", "diffusion_modalities"))


def _conv_bn(cin: int, cout: int, k: int, norm: str = "batch") -> list[nn.Module]:
    """A convolution and its normalisation: BatchNorm as in FedFusion's code, or GroupNorm — which
    keeps no running statistics, so clients of class-disjoint sites average nothing site-specific
    and a model behaves the same in training and evaluation."""
    if norm not in NORMS:
        raise ValueError(f"FedDiff classifier norm {norm!r}; expected one of {NORMS}")
    return [nn.Conv2d(cin, cout, k, padding=k // 2), norm_layer(norm, cout)]


class PatchBranch(nn.Module):
    """One modality's patch CNN, diffusion stem and diffusion-enhanced path."""

    def __init__(self, in_channels: int, feature_channels: int, use_diffusion: bool, norm: str = "batch",
                 centre_path: bool = False, spectral_stem: int = 0):
        super().__init__()
        if centre_path:  # the pixel being classified, straight into cnn_m: pooling blurs it into its neighbours
            self.centre = nn.Sequential(*_conv_bn(in_channels, 128, 1, norm), nn.ReLU(inplace=True))
        if spectral_stem:  # one spectral mapping shared by every position before anything mixes space
            self.spectral = nn.Sequential(*_conv_bn(in_channels, spectral_stem, 1, norm), nn.ReLU(inplace=True))
        self.use_diffusion = use_diffusion
        self.layer1 = nn.Sequential(*_conv_bn(spectral_stem or in_channels, 16, 3, norm), nn.ReLU(inplace=True))
        self.layer2 = nn.Sequential(*_conv_bn(16, 32, 1, norm), nn.MaxPool2d(2), nn.ReLU(inplace=True))
        self.layer3 = nn.Sequential(*_conv_bn(32, 64, 3, norm), nn.ReLU(inplace=True))
        self.layer4 = nn.Sequential(*_conv_bn(64, 128, 1, norm), nn.MaxPool2d(2), nn.ReLU(inplace=True))
        if use_diffusion:
            self.stem = nn.Sequential(*_conv_bn(feature_channels, 512, 3, norm), nn.ReLU(inplace=True),
                                      *_conv_bn(512, 256, 1, norm), nn.ReLU(inplace=True))
        self.enhanced = nn.Sequential(*_conv_bn(64 + (256 if use_diffusion else 0), 128, 1, norm), nn.MaxPool2d(2),
                                      nn.ReLU(inplace=True))

    def forward(self, patch: torch.Tensor, features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        third = self.layer3(self.layer2(self.layer1(self.spectral(patch) if hasattr(self, "spectral") else patch)))
        cnn = self.layer4(third)
        if hasattr(self, "centre"):
            h, w = patch.shape[-2:]
            centre = patch[:, :, (h - 1) // 2:h // 2 + 1, (w - 1) // 2:w // 2 + 1].mean(dim=(2, 3), keepdim=True)
            cnn = cnn + self.centre(centre)
        if not self.use_diffusion:
            return cnn, self.enhanced(third)
        if features is None:
            raise ValueError("this FedDiff branch was built with use_diffusion: true and needs the diffusion "
                             "features of its pixels; none were given")
        return cnn, self.enhanced(torch.cat([third, self.stem(features)], dim=1))


class FR(nn.Module):
    """Gated fusion: shared 1×1 reduce/expand on both inputs, two 3×3 sigmoid gates from a."""

    def __init__(self, channels: int = 128):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.expand = nn.Conv2d(channels // 2, channels, 1)
        self.gate_col = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate_row = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = self.expand(self.reduce(a))
        b = self.expand(self.reduce(b))
        col = a + torch.sigmoid(self.gate_col(a)) * b
        row = a + torch.sigmoid(self.gate_row(a)) * b
        return row + col


class Head(nn.Module):
    def __init__(self, num_classes: int, channels: int = 128, norm: str = "batch"):
        super().__init__()
        self.net = nn.Sequential(*_conv_bn(channels, 128, 1, norm), nn.ReLU(inplace=True),
                                 *_conv_bn(128, 64, 1, norm), nn.AvgPool2d(2), nn.ReLU(inplace=True),
                                 nn.Conv2d(64, num_classes, 1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FedDiffClassifier(nn.Module):
    def __init__(self, spec: FedDiffSpec):
        super().__init__()
        self.spec = spec
        both = set(spec.modalities) == {"hsi", "lidar"}
        if "hsi" in spec.modalities:
            self.hsi_branch = PatchBranch(spec.hsi_channels, spec.hsi_feature_channels, spec.diffuses("hsi"),
                                          spec.norm, spec.centre_path, spec.spectral_stem)
            self.fr2, self.head2 = FR(), Head(spec.num_classes, norm=spec.norm)
        if "lidar" in spec.modalities:
            self.lidar_branch = PatchBranch(spec.lidar_channels, spec.lidar_feature_channels, spec.diffuses("lidar"),
                                            spec.norm, spec.centre_path)
            self.fr3, self.head3 = FR(), Head(spec.num_classes, norm=spec.norm)
        if both:
            self.head1 = Head(spec.num_classes, norm=spec.norm)
            if spec.bilateral:
                self.fr1 = FR()
        # as the fusion CNN drops its fused features before its classifier; no parameters, so a model
        # without it has the same state; p = 0 builds nothing and draws no random numbers
        self.drop = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()

    def fuse(self, cnn_h: torch.Tensor, diff_h: torch.Tensor, cnn_l: torch.Tensor, diff_l: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (o1, o2, o3) from the four branch outputs — also how a client fuses its own live
        branch outputs with its partner's received ones."""
        j2 = self.fr2(cnn_h, diff_h)
        j3 = self.fr3(diff_l, cnn_l)
        j1 = self.fr1(cnn_h + diff_l, cnn_l + diff_h) if self.spec.bilateral else j2 + j3
        return self.head1(self.drop(j1)), self.head2(self.drop(j2)), self.head3(self.drop(j3))

    def forward(self, hsi: torch.Tensor | None = None, lidar: torch.Tensor | None = None,
                hsi_features: torch.Tensor | None = None, lidar_features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.spec.modalities == ("hsi",):  # single-modality ablation: j2 and its head, thrice
            o = self.head2(self.drop(self.fr2(*self.hsi_branch(hsi, hsi_features))))
            return o, o, o
        if self.spec.modalities == ("lidar",):
            cnn_l, diff_l = self.lidar_branch(lidar, lidar_features)
            o = self.head3(self.drop(self.fr3(diff_l, cnn_l)))
            return o, o, o
        cnn_h, diff_h = self.hsi_branch(hsi, hsi_features)
        cnn_l, diff_l = self.lidar_branch(lidar, lidar_features)
        return self.fuse(cnn_h, diff_h, cnn_l, diff_l)


def conv_weight_penalty(model: nn.Module | None = None, weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Σ‖W‖² over the convolution weights of ``model`` (or the given ``weights``). The official
    code's term is always zero: a bug."""
    if weights is None:
        assert model is not None
        weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    return torch.stack([w.float().pow(2).sum() for w in weights]).sum()


def feddiff_loss_terms(outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], labels: torch.Tensor,
                       detach_target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CE(o1, y) and the heads' consistency mean((o2 − o1)²) + mean((o3 − o1)²).

    As the spec has it, the consistency's gradient reaches o1 too, pulling the fused prediction
    toward what one modality's head can express. ``detach_target``: o1 is a fixed target there, so
    the unimodal heads learn from the fused one and the fused head from the labels alone."""
    o1, o2, o3 = (o.float() for o in outputs)
    target = o1.detach() if detach_target else o1
    raw = torch.where(torch.isfinite(target), target, target.new_zeros(()))  # masked logits take no part in consistency
    finite = torch.isfinite(o1).float()
    consistency = (((o2 - raw) * finite).pow(2).sum() + ((o3 - raw) * finite).pow(2).sum()) / finite.sum()
    return F.cross_entropy(o1, labels), consistency


def unimodal_cross_entropy(outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], labels: torch.Tensor
                           ) -> torch.Tensor:
    """CE(o2, y) + CE(o3, y): the HSI-only and LiDAR-only heads against the labels (FedCMI's
    per-modality classifier losses, which the spec's FedDiff has not: there they learn only to match o1)."""
    return F.cross_entropy(outputs[1].float(), labels) + F.cross_entropy(outputs[2].float(), labels)


def feddiff_loss(outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], labels: torch.Tensor,
                 model: nn.Module | None = None, weight_decay: float = 0.01) -> torch.Tensor:
    """CE(o1, y) + mean((o2 − o1)²) + mean((o3 − o1)²) + λ·Σ‖W‖² over conv weights."""
    ce, consistency = feddiff_loss_terms(outputs, labels)
    loss = ce + consistency
    if model is not None and weight_decay:
        loss = loss + weight_decay * conv_weight_penalty(model)
    return loss
