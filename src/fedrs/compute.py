"""Where and in what precision torch work runs: one policy for training, features, scoring and maps.

``device``: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.
``precision``:
- ``fp32`` (default): no autocast anywhere, so a result does not depend on which CPU ran it; on a
  GPU, TF32 is turned off too (PyTorch's default runs CUDA convolutions in TF32);
- ``bf16``: CUDA autocast on a GPU, CPU autocast on a CPU with native bf16 (AVX-512 BF16 or AMX).
  Asked for on a CPU without it, the run stops: PyTorch would emulate bf16 there, 10-25× slower
  than fp32 (measured in ``bench/bench_unet.py``);
- ``bf16-force``: bf16 autocast even where it is emulated (the test suite uses it on tiny models,
  so a dtype mismatch in any algorithm fails on every machine).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16", "bf16-force")


class PrecisionError(ValueError):
    """A precision the machine cannot honour as asked."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device: auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device {name!r}; expected 'auto', 'cpu' or 'cuda[:N]'")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: without them bf16 autocast on CPU is emulated and much slower than fp32."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(probe and probe()) for probe in probes)


@dataclass(frozen=True)
class ComputePolicy:
    """A resolved device and the autocast dtype (None: plain fp32)."""

    device: torch.device
    dtype: torch.dtype | None = None

    @property
    def precision(self) -> str:
        return "fp32" if self.dtype is None else "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> dict[str, str]:
        """What a result records about how it was computed."""
        return {"device": str(self.device), "precision": self.precision,
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def compute_policy(device: str = "auto", precision: str = "fp32") -> ComputePolicy:
    """The policy for a ``device`` and ``precision`` setting, or a ``PrecisionError`` saying why not."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    resolved = resolve_device(device)
    if precision == "fp32":
        if resolved.type == "cuda":
            # PyTorch runs CUDA convolutions in TF32 by default (10-bit mantissa): fp32 means fp32 here too,
            # so a GPU run agrees with a CPU run of the same seed (tests/test_cuda.py)
            torch.backends.cudnn.conv.fp32_precision = "ieee"  # type: ignore[attr-defined]
            torch.backends.cuda.matmul.fp32_precision = "ieee"
        return ComputePolicy(resolved)
    if resolved.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise PrecisionError(f"precision bf16: the GPU {torch.cuda.get_device_name(resolved)} has no bf16 "
                                 "support; use precision: fp32 (or bf16-force to emulate it)")
        return ComputePolicy(resolved, torch.bfloat16)
    if precision == "bf16" and not cpu_has_native_bf16():
        raise PrecisionError("precision bf16 on a CPU without native bf16 (AVX-512 BF16 or AMX): PyTorch would "
                             "emulate it, 10-25× slower than fp32. Use precision: fp32 (the default), or "
                             "bf16-force to accept the emulation")
    return ComputePolicy(resolved, torch.bfloat16)


COMPUTE_KEYS = ("device", "precision")


def with_compute(block: dict[str, Any] | None, compute: dict[str, Any]) -> dict[str, Any]:
    """A training or inference block with the run's device and precision (the ``compute``
    parameters, conf/base/parameters_compute.yml): one place says how every stage computes."""
    return {**(block or {}), **{k: compute[k] for k in COMPUTE_KEYS if k in compute}}
