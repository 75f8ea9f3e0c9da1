"""Stage 1's algorithm: one modality's U-Net federated over its holders, scored by held-out
denoising error; and the diffusion features a U-Net gives a batch of patches (seeded noise)."""

import numpy as np
import pytest
import torch

from fedrs.compute import compute_policy
from fedrs.feddiff.ddpm import diffusion_feature_bundle, unet_input
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec
from fedrs.federated.algorithms import get_algorithm, get_classifier
from tests.feddiff.test_algorithm import client


def test_ddpm_algorithm_trains_one_modality(rng):
    alg = get_algorithm("ddpm_lidar")
    assert alg.is_eligible(("lidar",)) and not alg.is_eligible(("hsi",))
    model = alg.build_model({"in_channels": 2, "base_channels": 8, "steps": 50})
    state, metrics = alg.client_update(model, client(rng, "lidar"), ("lidar",), {"epochs": 1, "batch_size": 8}, seed=0)
    assert metrics["train_loss"] > 0 and set(state) == set(model.state_dict())
    assert "l1" in alg.evaluate(model, client(rng, "lidar"), {})


def test_a_diffusion_model_is_no_classifier():
    with pytest.raises(ValueError, match="trains no classifier"):
        get_classifier("ddpm_hsi")
    assert get_classifier("feddiff").name == "feddiff"


def test_features_are_seeded_batched_alike_and_sized_by_the_unet(rng):
    unet = DiffusionUNet(UNetSpec.from_dict({"in_channels": 3, "base_channels": 8, "steps": 50, "size": 8})).eval()
    patches = rng.standard_normal((10, 3, 7, 7)).astype(np.float32)
    policy = compute_policy("cpu", "fp32")
    whole = diffusion_feature_bundle(unet, patches, [5, 20], 3, policy)
    again = diffusion_feature_bundle(unet, patches, [5, 20], 3, policy, batch_size=4)
    other = diffusion_feature_bundle(unet, patches, [5, 20], 4, policy)
    assert whole.shape[0] == 10 and whole.shape[1] == 2 * unet.spec.base_channels * unet.spec.channel_mult[-1]
    np.testing.assert_array_equal(whole, again)
    assert not np.array_equal(whole, other)
    assert unet_input(patches, 8).shape == (10, 3, 8, 8) and torch.is_tensor(unet_input(patches, 8))
