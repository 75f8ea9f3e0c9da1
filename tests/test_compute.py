"""The precision policy: fp32 by default everywhere, bf16 only where it is native (or forced), and
the CUDA branch's choices checked with the device mocked."""

import pytest
import torch

from fedrs import compute
from fedrs.compute import ComputePolicy, PrecisionError, compute_policy


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine without a GPU (CI's kind), also where the suite runs on one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return monkeypatch


def test_fp32_is_the_default_and_never_autocasts(no_cuda):
    policy = compute_policy()
    assert policy == ComputePolicy(torch.device("cpu")) and policy.precision == "fp32"
    with policy.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert policy.describe()["precision"] == "fp32"


def test_bf16_on_a_cpu_without_native_bf16_stops_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(PrecisionError, match="without native bf16.*bf16-force"):
        compute_policy("cpu", "bf16")
    forced = compute_policy("cpu", "bf16-force")  # the emulation, accepted knowingly
    assert forced.dtype == torch.bfloat16
    with forced.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_bf16_on_a_cpu_with_native_bf16_autocasts(no_cuda, monkeypatch):
    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda: True)
    policy = compute_policy("auto", "bf16")
    assert policy.device.type == "cpu" and policy.dtype == torch.bfloat16 and policy.precision == "bf16"


def test_unknown_precision_or_device_is_refused():
    with pytest.raises(PrecisionError, match="precision 'fp16'; expected one of fp32, bf16, bf16-force"):
        compute_policy("cpu", "fp16")
    with pytest.raises(ValueError, match="device 'tpu'"):
        compute_policy("tpu")


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine that reports a CUDA device (nothing is run on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Mock GPU")
    return monkeypatch


def test_cuda_branch_choices_with_the_device_mocked(fake_cuda):
    fake_cuda.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    try:
        conv.fp32_precision = matmul.fp32_precision = "tf32"
        assert compute_policy("auto").device == torch.device("cuda")
        # fp32 on a GPU is fp32: PyTorch's default TF32 convolutions are turned off
        assert conv.fp32_precision == matmul.fp32_precision == "ieee"
    finally:
        conv.fp32_precision, matmul.fp32_precision = before
    assert compute_policy("auto").dtype is None  # fp32 on a GPU too unless asked
    bf16 = compute_policy("auto", "bf16")
    assert bf16.device.type == "cuda" and bf16.dtype == torch.bfloat16
    assert compute_policy("cpu", "fp32").device == torch.device("cpu")  # an explicit CPU stays a CPU
    fake_cuda.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(PrecisionError, match="Mock GPU has no bf16"):
        compute_policy("cuda", "bf16")
    assert compute_policy("cuda", "bf16-force").dtype == torch.bfloat16


def test_cuda_asked_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available; use device: auto"):
        compute_policy("cuda")
    assert compute_policy("auto").device == torch.device("cpu")
