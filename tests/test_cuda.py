"""The GPU path, run for real where CUDA is present (elsewhere the suite mocks it, tests/test_compute.py):
a model's outputs on CUDA in fp32 equal the CPU's to fp32 rounding (PyTorch's default TF32 convolutions
would miss by ~1e-3, so this fails if ``fp32`` stops meaning fp32 on a GPU); every algorithm's local
update on CUDA follows the CPU's (same batches, same noise: the seeded draws happen on the CPU; dropout
masks come from the device's own generator, so the fusion CNN is compared without dropout); and
diffusion features computed on a GPU equal the CPU's, so a client may featurise on either.

Skipped, with the reason, on a machine without CUDA (CI). On a GPU machine:
``pytest tests/test_cuda.py tests/federated/algorithms/test_bf16.py``."""

import numpy as np
import pytest
import torch

from fedrs.compute import compute_policy
from fedrs.feddiff.ddpm import diffusion_feature_bundle
from fedrs.federated.algorithms import get_algorithm
from tests.federated.tiny_data import TINY_FEDDIFF_SPEC, TINY_FUSION_SPEC, tiny_client_data, with_diffusion_features

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

FUSION = {**TINY_FUSION_SPEC, "dropout": 0.0}
FEDDIFF = TINY_FEDDIFF_SPEC
UNET = {"in_channels": 1, "base_channels": 8, "steps": 50}


def _data(rng, modalities=("hsi", "lidar"), features=False):
    data = tiny_client_data(rng, modalities)
    return with_diffusion_features(rng, data) if features else data


CASES = {  # algorithm: (spec, client modalities, data maker, training round, its own config)
    "fedavg": (FUSION, ("hsi", "lidar"), lambda rng: _data(rng), 1, {}),
    # past the warm-up: the teacher and the infiltration loss run
    "fedcmi": (FUSION, ("hsi", "lidar"), lambda rng: _data(rng), 3, {"cmi": {"warmup_rounds": 1}}),
    "ddpm_lidar": (UNET, ("lidar",), lambda rng: _data(rng, ("lidar",)), 1, {}),
    "feddiff_centralized": (FEDDIFF, ("hsi", "lidar"), lambda rng: _data(rng, features=True), 1, {}),
}


def _update(name: str, device: str, rng_seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    spec, modalities, make, rnd, own = CASES[name]
    data = make(np.random.default_rng(rng_seed))
    alg = get_algorithm(name)
    torch.manual_seed(0)
    model = alg.build_model(spec)
    config = {"epochs": 2, "batch_size": 8, "device": device, "precision": "fp32", **own}
    state, metrics = alg.client_update(model, data, modalities, config, seed=0, rnd=rnd)
    return {k: v.detach().cpu() for k, v in state.items()}, metrics


def test_fp32_on_cuda_is_fp32_not_tf32():
    torch.manual_seed(0)
    model = get_algorithm("feddiff_centralized").build_model(FEDDIFF).eval()
    inputs = {"hsi": torch.randn(64, 5, 8, 8), "lidar": torch.randn(64, 1, 8, 8),
              "hsi_features": torch.randn(64, 16, 4, 4), "lidar_features": torch.randn(64, 16, 4, 4)}
    with torch.no_grad():
        cpu = model(**inputs)[0]
        policy = compute_policy("cuda", "fp32")
        gpu = model.to(policy.device)(**{k: v.to(policy.device) for k, v in inputs.items()})[0].cpu()
    assert policy.dtype is None
    # measured on an H200: 4e-8 at most in fp32, 3e-5 with TF32 convolutions
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_local_update_on_cuda_follows_the_cpus(name):
    cpu_state, cpu_metrics = _update(name, "cpu")
    gpu_state, gpu_metrics = _update(name, "cuda")
    assert gpu_metrics["train_loss"] == pytest.approx(cpu_metrics["train_loss"], rel=1e-4)
    assert set(gpu_state) == set(cpu_state)
    for key, value in cpu_state.items():
        if value.is_floating_point():
            # Adam's first steps are nearly sign(g)·lr: a gradient within rounding of zero may step either way
            torch.testing.assert_close(gpu_state[key], value, rtol=1e-3, atol=3e-3, msg=key)
        else:
            assert torch.equal(gpu_state[key], value), key


def test_diffusion_features_on_cuda_equal_the_cpus(rng):
    alg = get_algorithm("ddpm_lidar")
    torch.manual_seed(0)
    model = alg.build_model(UNET).eval()
    patches = tiny_client_data(rng, ("lidar",))["lidar"]
    cpu = diffusion_feature_bundle(model, patches, [5, 20], 0, compute_policy("cpu", "fp32"))
    gpu = diffusion_feature_bundle(model, patches, [5, 20], 0, compute_policy("cuda", "fp32"))
    assert gpu.dtype == cpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5)
    # stage 1's linear probe computes the same inputs on the device its config names
    data = {"lidar": patches}
    on_cpu = alg.probe_inputs(model, data, (5, 20), 0, {"device": "cpu"})
    on_gpu = alg.probe_inputs(model, data, (5, 20), 0, {"device": "cuda"})
    assert next(model.parameters()).device.type == "cuda"
    for name, value in on_cpu.items():
        torch.testing.assert_close(on_gpu[name], value, rtol=1e-4, atol=1e-5)


def test_the_exchange_and_calibration_features_on_cuda_equal_the_cpus():
    """A FedDiff client on a GPU sends its partner what a CPU client would, and gives calibration the
    same features of its pixels (the relayed outputs and head1's inputs)."""
    rng = np.random.default_rng(0)
    hsi, lidar = _data(rng, ("hsi",), features=True), _data(rng, ("lidar",), features=True)
    lidar["labels"] = hsi["labels"]
    alg = get_algorithm("feddiff")
    torch.manual_seed(0)
    model = alg.build_model(FEDDIFF)
    results = {}
    for device in ("cpu", "cuda"):
        config = {"device": device, "precision": "fp32"}
        partner = alg.client_exchange(model, lidar, ("lidar",), config)
        results[device] = partner, alg.client_features(model, hsi, ("hsi",), config, partner=partner).cpu()
    for key in ("cnn", "diff"):
        torch.testing.assert_close(results["cuda"][0][key], results["cpu"][0][key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], rtol=1e-5, atol=1e-5)
