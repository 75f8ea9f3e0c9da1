"""FedAvg / FedProx over the fusion CNN (``FusionAlgorithm``): what a client with one modality may
train and send, and what the masked aggregation then does with the other branch."""

import numpy as np
import torch

from fedrs.federated.aggregation import ClientUpdate
from fedrs.federated.algorithms import get_algorithm
from tests.federated.tiny_data import tiny_client_data

SPEC = {"bands": 5, "lidar_channels": 1, "num_classes": 3, "width": 8, "dim": 16}
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 0.01}


def test_an_hsi_client_trains_and_sends_the_hsi_branch_and_the_shared_head_only():
    algorithm = get_algorithm("fedavg")
    torch.manual_seed(0)
    model = algorithm.build_model(SPEC)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = tiny_client_data(np.random.default_rng(0), ("hsi",))
    state, metrics = algorithm.client_update(model, data, ("hsi",), TRAIN, seed=1, rnd=1)
    owners = {k: algorithm.owner(k) for k in before}
    assert set(state) == {k for k, o in owners.items() if o in (None, "hsi")}
    assert {o for o in owners.values()} == {None, "hsi", "lidar"}
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k, o in owners.items() if o == "lidar")  # frozen
    assert any(not torch.equal(after[k], before[k]) for k, o in owners.items() if o == "hsi")
    assert np.isfinite(metrics["train_loss"])


def test_the_lidar_branch_is_averaged_over_the_clients_that_hold_lidar_only():
    algorithm = get_algorithm("fedavg")
    torch.manual_seed(0)
    global_state = algorithm.build_model(SPEC).state_dict()
    lidar_key = next(k for k in global_state if algorithm.owner(k) == "lidar" and global_state[k].is_floating_point())
    shared_key = next(k for k in global_state if algorithm.owner(k) is None and global_state[k].is_floating_point())
    hsi_only = {k: torch.full_like(v, 1.0) for k, v in global_state.items() if algorithm.owner(k) != "lidar"}
    both = {k: torch.full_like(v, 3.0) for k, v in global_state.items()}
    updates = [ClientUpdate(0, hsi_only, 10, ("hsi",)), ClientUpdate(1, both, 10, ("hsi", "lidar"))]
    merged = algorithm.aggregate(global_state, updates)
    assert torch.allclose(merged[lidar_key], torch.full_like(merged[lidar_key], 3.0))  # one holder
    assert torch.allclose(merged[shared_key], torch.full_like(merged[shared_key], 2.0))  # both


def test_unimodal_variants_build_one_branch_and_calibrate_the_last_linear_layer():
    for name, kept in (("fedavg_hsi", "hsi"), ("fedavg_lidar", "lidar")):
        algorithm = get_algorithm(name)
        model = algorithm.build_model(SPEC)
        assert {algorithm.owner(k) for k in model.state_dict()} == {None, kept}
        assert not algorithm.is_eligible(({"hsi": "lidar", "lidar": "hsi"}[kept],))
        last = model.get_submodule(algorithm.require_calibration_layer())
        assert isinstance(last, torch.nn.Linear) and last.out_features == SPEC["num_classes"]
