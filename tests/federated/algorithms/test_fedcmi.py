"""FedCMI's objective, piece by piece, against hand-computed values."""

import math

import pytest
import torch

from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.algorithms.fedcmi import (
    CmiConfig,
    class_temperatures,
    cmi_local_update,
    dominant_modality,
    infiltration_loss,
)
from fedrs.federated.local import TrainConfig
from fedrs.models.cmi import cmi_parameter_modality
from tests.federated.tiny_data import tiny_client_data as data

SPEC = {"bands": 5, "lidar_channels": 1, "num_classes": 3, "width": 8, "dim": 8}


def test_dominant_modality_on_a_hand_built_batch():
    labels = torch.tensor([0, 1])
    confident = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    unsure = torch.zeros(2, 3)
    assert dominant_modality(confident, unsure, labels) == "hsi"
    assert dominant_modality(unsure, confident, labels) == "lidar"
    assert dominant_modality(unsure, unsure, labels) == "lidar"  # ratio exactly 1 is not "> 1"


def test_temperatures_when_hsi_dominates():
    # ratios P_H/P_L = [3, 1, 1] → r̄ = 5/3; only class 0 lies above it
    tau = class_temperatures([0.9, 0.6, 0.5], [0.3, 0.6, 0.5], [True, True, True], gamma=2.0)
    assert tau[0] == pytest.approx(1 / (1 + 2 * math.log(3 / (5 / 3))))
    assert tau[1:].tolist() == [1.0, 1.0]


def test_temperatures_when_lidar_dominates():
    # ratios [0.25, 1, 1] → r̄ = 0.75 ≤ 1: swap roles, P_L/P_H = [4, 1, 1] against 1/r̄ = 4/3
    tau = class_temperatures([0.2, 0.5, 0.5], [0.8, 0.5, 0.5], [True, True, True], gamma=2.0)
    assert tau[0] == pytest.approx(1 / (1 + 2 * math.log(4 * 0.75)))
    assert tau[1:].tolist() == [1.0, 1.0]


def test_temperatures_skip_zero_probability_and_absent_classes():
    # class 0 has P_L = 0 (skipped in r̄), class 3 is absent; valid ratios [1, 2] → r̄ = 1.5
    tau = class_temperatures([0.5, 0.5, 0.5, 0.9], [0.0, 0.5, 0.25, 0.1], [True, True, True, False], gamma=2.0)
    assert tau[0] == 1.0 and tau[1] == 1.0 and tau[3] == 1.0
    assert tau[2] == pytest.approx(1 / (1 + 2 * math.log(2 / 1.5)))
    assert class_temperatures([0.3], [0.0], [True], 2.0).tolist() == [1.0]


def test_infiltration_loss_value_and_detached_teacher():
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0]], requires_grad=True)
    tau = torch.tensor([1.0, 0.5])
    loss = infiltration_loss(student, teacher, tau)
    p_t = [torch.softmax(teacher[0] / 1.0, 0), torch.softmax(teacher[1] / 0.5, 0)]
    log_p_s = [torch.log_softmax(student[0] / 1.0, 0), torch.log_softmax(student[1] / 0.5, 0)]
    expected = -((p_t[0] * log_p_s[0]).sum() + (p_t[1] * log_p_s[1]).sum()) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_ownership_and_masked_aggregation():
    alg = get_algorithm("fedcmi")
    model = alg.build_model(SPEC)
    owners = {n: cmi_parameter_modality(n) for n in model.state_dict()}
    assert owners["hsi_infiltration.weight"] == "hsi" and owners["lidar_classifier.bias"] == "lidar"
    assert owners["fusion.weight"] is None
    hsi_keys = alg.client_keys(model, ("hsi",))
    assert "fusion.weight" in hsi_keys and not any(k.startswith("lidar_") for k in hsi_keys)
    from fedrs.federated.aggregation import ClientUpdate

    g = model.state_dict()
    hsi_client = ClientUpdate(
        0, {k: torch.ones_like(g[k]) for k in hsi_keys if torch.is_floating_point(g[k])}, 10, ("hsi",)
    )
    new = alg.aggregate(g, [hsi_client])
    assert torch.equal(new["lidar_self.weight"], g["lidar_self.weight"])
    assert torch.equal(new["hsi_self.weight"], torch.ones_like(g["hsi_self.weight"]))


def test_warmup_then_infiltration(rng):
    alg = get_algorithm("fedcmi")
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    batch = data(rng)
    keys = {n for n, _ in model.named_parameters()}
    cfg = TrainConfig(epochs=1, batch_size=8)
    first = cmi_local_update(model, batch, ("hsi", "lidar"), cfg, CmiConfig(warmup_rounds=1), 1, rnd=1, trainable=keys)
    second = cmi_local_update(model, batch, ("hsi", "lidar"), cfg, CmiConfig(warmup_rounds=1), 1, rnd=2, trainable=keys)
    assert first["infiltration_loss"] == 0.0 and second["infiltration_loss"] > 0.0
    assert 0.0 <= second["hsi_dominant_fraction"] <= 1.0 and 0.0 < second["mean_temperature"] <= 1.0


def test_unimodal_client_trains_its_side_only(rng):
    alg = get_algorithm("fedcmi")
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, metrics = alg.client_update(
        model,
        data(rng, ("lidar",)),
        ("lidar",),
        {"epochs": 1, "batch_size": 8, "cmi": {"warmup_rounds": 0}},
        seed=0,
        rnd=3,
    )
    assert metrics["infiltration_loss"] == 0.0  # no infiltration without both modalities
    assert not any(k.startswith("hsi_") for k in state)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before if k.startswith("hsi_"))
    assert not torch.equal(state["lidar_infiltration.weight"], before["lidar_infiltration.weight"])


def test_variants_are_reported(rng):
    alg = get_algorithm("fedcmi")
    torch.manual_seed(0)
    model = alg.build_model(SPEC)
    test = {**data(rng), "num_classes": 3, "class_names": ["a", "b", "c"]}
    variants = alg.evaluation_variants(model, test, {"cmi": {}}, ("hsi", "lidar"))
    assert set(variants) == {"hsi_infiltrated", "hsi_zero_filled", "lidar_infiltrated", "lidar_zero_filled"}
    assert set(variants["lidar_infiltrated"]) == {"oa", "aa", "kappa", "per_class_spread"}
