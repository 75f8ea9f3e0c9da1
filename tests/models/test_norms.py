"""The normalisation layers the models choose from (fedrs.models.norms)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedrs.models.norms import norm_layer


def test_group_norm_of_a_feature_vector_keeps_more_than_signs():
    """Groups of two features normalised per sample leave ±1 in each pair: a [N, C] vector is
    normalised over all its features instead (first measured as FedAvg 0.42 OA on Houston)."""
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    out = norm_layer("group", 64, dims=1)(x)
    assert out.abs().unique().numel() > 1000  # not ±1 everywhere
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(64), atol=1e-5, rtol=0)


def test_norm_kinds_and_a_bad_name():
    assert isinstance(norm_layer("batch", 8), nn.BatchNorm2d) and isinstance(norm_layer("batch", 8, 1), nn.BatchNorm1d)
    assert isinstance(norm_layer("group", 32), nn.GroupNorm) and norm_layer("group", 32).num_groups == 16
    with pytest.raises(ValueError, match="norm 'layer'; expected one of"):
        norm_layer("layer", 8)
