"""The contract every algorithm of the table keeps (``ClassifierAlgorithm``): ownership decides
what a client may train and send, calibration is for clients that see every modality, scoring
accepts only inference settings."""

import numpy as np
import pytest
import torch

from fedrs.federated.algorithm_base import inference_config, layer_inputs
from fedrs.federated.algorithms import ALGORITHMS, BASELINES, ClassifierAlgorithm
from fedrs.federated.local import TrainConfig
from tests.federated.tiny_data import tiny_client_data

FUSION_SPEC = {"bands": 5, "lidar_channels": 1, "num_classes": 3, "width": 8, "dim": 16}
CLIENTS = (("hsi",), ("lidar",), ("hsi", "lidar"))


@pytest.mark.parametrize("name", [*BASELINES, "fedcmi"])
def test_a_client_sends_what_it_may_train_and_nothing_of_a_modality_it_lacks(name):
    algorithm = ALGORITHMS[name]
    assert isinstance(algorithm, ClassifierAlgorithm) and algorithm.name == name
    model = algorithm.build_model(FUSION_SPEC)
    keys = set(model.state_dict())
    for held in CLIENTS:
        usable = algorithm.usable_modalities(held)
        assert algorithm.is_eligible(held) == bool(usable)
        if not usable:
            continue
        sent = algorithm.client_keys(model, held)
        assert algorithm.trainable(model, held) <= sent <= keys
        assert all(algorithm.owner(k) in (None, *usable) for k in sent)
        assert algorithm.calibration_contributes(held) == (usable == algorithm.modalities)


def test_layer_inputs_are_what_the_layer_receives_in_order_and_in_eval_mode():
    algorithm = ALGORITHMS["fedavg"]
    torch.manual_seed(0)
    model = algorithm.build_model(FUSION_SPEC)
    model.train()
    data = tiny_client_data(np.random.default_rng(1), n=13)
    layer = algorithm.require_calibration_layer()
    cfg = TrainConfig.from_dict({"eval_batch_size": 5})
    features = algorithm.client_features(model, data, ("hsi", "lidar"), {"eval_batch_size": 5})
    width = model.get_submodule(layer).in_features
    assert features.shape == (13, width) and not model.training
    # the same rows, computed by hand over one batch
    inputs = {"hsi": torch.as_tensor(data["hsi"]), "lidar": torch.as_tensor(data["lidar"])}
    by_hand = layer_inputs(model, layer, 13, cfg, lambda sl, device: model(**{k: v[sl] for k, v in inputs.items()}))
    assert torch.allclose(features, by_hand)
    assert not model.get_submodule(layer)._forward_pre_hooks  # the hook is gone


def test_scoring_keeps_only_the_inference_settings():
    assert inference_config({"lr": 0.1, "epochs": 3, "device": "cpu", "precision": "fp32", "eval_batch_size": 7}) == \
        {"device": "cpu", "precision": "fp32", "eval_batch_size": 7}
    assert inference_config(None) == {}


@pytest.mark.parametrize("name", [*BASELINES, "fedcmi"])
def test_the_scored_loss_is_the_models_cross_entropy_over_every_pixel(name):
    algorithm = ALGORITHMS[name]
    torch.manual_seed(0)
    model = algorithm.build_model(FUSION_SPEC).eval()
    data = {**tiny_client_data(np.random.default_rng(3), n=23), "num_classes": 3}
    # batches of 5 over 23 pixels: the last one short, every pixel counted once
    report = algorithm.score(model, data, {"eval_batch_size": 5}, algorithm.modalities)
    with torch.no_grad():
        logits = model(**{m: torch.as_tensor(data[m]) for m in algorithm.modalities})
    logits = logits[0] if isinstance(logits, tuple) else logits
    expected = torch.nn.functional.cross_entropy(logits, torch.as_tensor(data["labels"])).item()
    assert report["loss"] == pytest.approx(expected, rel=1e-5)
    assert report["oa"] == pytest.approx(float((logits.argmax(1).numpy() == data["labels"]).mean()))
