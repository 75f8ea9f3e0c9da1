"""The normalisation layers every model chooses from: BatchNorm (running statistics, a batch's
samples normalised together) or GroupNorm (per sample: no running statistics to average across
class-disjoint sites, and per-record gradients exist — what record-level DP needs)."""

from __future__ import annotations

from torch import nn

NORMS = ("batch", "group")


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups as in guided-diffusion when the width allows, fewer for narrow CPU-sized models."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 2:
            return nn.GroupNorm(groups, channels)
    return nn.GroupNorm(1, channels)


def norm_layer(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """``kind`` (batch | group) over ``channels`` of a [N, C, H, W] (``dims`` 2) or [N, C] (``dims`` 1) input."""
    if kind not in NORMS:
        raise ValueError(f"norm {kind!r}; expected one of {list(NORMS)}")
    if kind == "group":  # a [N, C] vector: over all its features (groups of two would leave only their signs)
        return group_norm(channels) if dims == 2 else nn.GroupNorm(1, channels)
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
