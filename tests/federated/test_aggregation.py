"""Modality-aware, sample-weighted FedAvg and update screening, against hand-computed values."""

import pytest
import torch

from fedrs.federated.aggregation import ClientUpdate, aggregate_modality_aware, screen_updates, update_norm


def owner(name):
    return name.split(".")[0] if name.split(".")[0] in ("hsi", "lidar") else None


GLOBAL = {"hsi.w": torch.tensor([0.0, 0.0]), "lidar.w": torch.tensor([5.0]), "head.w": torch.tensor([1.0]),
          "hsi.count": torch.tensor(3)}


def test_weights_and_masks_by_hand():
    updates = [
        ClientUpdate(
            0,
            {"hsi.w": torch.tensor([1.0, 2.0]), "head.w": torch.tensor([2.0]), "hsi.count": torch.tensor(7)},
            10,
            ("hsi",),
        ),
        ClientUpdate(
            1,
            {
                "hsi.w": torch.tensor([4.0, 8.0]),
                "lidar.w": torch.tensor([9.0]),
                "head.w": torch.tensor([5.0]),
                "hsi.count": torch.tensor(4),
            },
            30,
            ("hsi", "lidar"),
        ),
        ClientUpdate(2, {"lidar.w": torch.tensor([1.0]), "head.w": torch.tensor([8.0])}, 20, ("lidar",)),
    ]
    state, contributors = aggregate_modality_aware(GLOBAL, updates, owner)
    # HSI over clients 0 and 1 (weights 10:30); LiDAR over 1 and 2 (30:20); head over all (10:30:20)
    assert torch.allclose(state["hsi.w"], torch.tensor([0.25 * 1 + 0.75 * 4, 0.25 * 2 + 0.75 * 8]))
    assert torch.allclose(state["lidar.w"], torch.tensor([0.6 * 9 + 0.4 * 1]))
    assert torch.allclose(state["head.w"], torch.tensor([(10 * 2 + 30 * 5 + 20 * 8) / 60]))
    assert state["hsi.count"].item() == 7 and state["hsi.count"].dtype == torch.int64
    assert contributors == {"hsi.w": 2, "lidar.w": 2, "head.w": 3, "hsi.count": 2}


def test_a_modality_nobody_holds_keeps_its_weights():
    updates = [ClientUpdate(0, {"hsi.w": torch.tensor([1.0, 1.0]), "head.w": torch.tensor([3.0])}, 5, ("hsi",))]
    state, contributors = aggregate_modality_aware(GLOBAL, updates, owner)
    assert torch.equal(state["lidar.w"], GLOBAL["lidar.w"]) and contributors["lidar.w"] == 0


def test_a_client_cannot_write_a_modality_it_does_not_hold():
    sneaky = ClientUpdate(0, {"lidar.w": torch.tensor([100.0]), "head.w": torch.tensor([1.0])}, 5, ("hsi",))
    state, _ = aggregate_modality_aware(GLOBAL, [sneaky], owner)
    assert torch.equal(state["lidar.w"], GLOBAL["lidar.w"])


def test_screening_rejects_nan_outliers_and_unknown_tensors():
    ok = [ClientUpdate(i, {"head.w": torch.tensor([1.0 + 0.1 * i])}, 1, ("hsi",)) for i in range(4)]
    nan = ClientUpdate(10, {"head.w": torch.tensor([float("nan")])}, 1, ("hsi",))
    huge = ClientUpdate(11, {"head.w": torch.tensor([1e6])}, 1, ("hsi",))
    alien = ClientUpdate(12, {"other.w": torch.tensor([1.0])}, 1, ("hsi",))
    accepted, rejected = screen_updates(ok + [nan, huge, alien], GLOBAL, outlier_factor=10.0)
    assert [u.client_id for u in accepted] == [0, 1, 2, 3]
    reasons = dict(rejected)
    assert "non-finite values in head.w" in reasons[10]
    assert "above 10.0 × median" in reasons[11]
    assert "unknown tensors" in reasons[12]
    _, rejected = screen_updates(ok, GLOBAL, outlier_factor=10.0, max_norm=0.15)
    assert [c for c, _ in rejected] == [2, 3]


def test_update_norm():
    assert update_norm({"hsi.w": torch.tensor([3.0, 4.0])}, GLOBAL) == pytest.approx(5.0)


def test_batchnorm_variances_are_pooled_not_averaged():
    """Two clients' running statistics pool to the mean and variance of their pixels together."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    b = 3.0 + 2.0 * torch.randn(30, 4, generator=gen, dtype=torch.float64)
    updates = [ClientUpdate(i, {"bn.running_mean": x.mean(0).float(),
                                "bn.running_var": x.var(0, unbiased=False).float()}, len(x), ("hsi",))
               for i, x in enumerate((a, b))]
    glob = {"bn.running_mean": torch.zeros(4), "bn.running_var": torch.ones(4)}
    state, _ = aggregate_modality_aware(glob, updates, owner)
    both = torch.cat([a, b])
    assert torch.allclose(state["bn.running_mean"].double(), both.mean(0), atol=1e-6)
    assert torch.allclose(state["bn.running_var"].double(), both.var(0, unbiased=False), rtol=1e-6)
    averaged = (50 * a.var(0, unbiased=False) + 30 * b.var(0, unbiased=False)) / 80
    assert (state["bn.running_var"].double() > averaged + 1.0).all()  # the spread of the means counts
