"""Bit-identical numbers across CPU kinds: ``FEDRS_REPRODUCIBLE=1`` (``make run REPRODUCIBLE=1``).

fp32 alone does not make a run repeat on another CPU: PyTorch, oneDNN and MKL pick kernels by
instruction set (AVX-512 on one server, AVX2 on the next), the kernels add in different orders,
and training amplifies the last-bit differences into different metrics. This mode pins the code
paths to what every x86-64 server of the last decade runs:

- ``ATEN_CPU_CAPABILITY=avx2``: PyTorch's own vectorised kernels at AVX2;
- ``MKL_CBWR=AVX2,STRICT`` (and ``MKL_ENABLE_INSTRUCTIONS=AVX2``): MKL's conditional numerical
  reproducibility — its BLAS and FFT give identical bits on any CPU with AVX2;
- oneDNN off (``torch.backends.mkldnn.enabled = False``, and ``ONEDNN_MAX_CPU_ISA=AVX2`` for any
  use that remains): convolutions go through ATen's im2col + MKL GEMM, covered by the line above;
- the thread count decides how parallel reductions split: machines of one size (2 cores here)
  agree by default; ``FEDRS_THREADS`` pins it where they do not.

Everything must be set before the first torch operation; ``fedrs/__init__.py`` calls
``enable_from_environment`` on import. The cost is measured by ``bench/bench_reproducible.py``.
"""

from __future__ import annotations

import os

ENV_FLAG = "FEDRS_REPRODUCIBLE"
CAPS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
}


def requested() -> str | None:
    """``strict`` (``1``, ``true``): the caps and oneDNN off; ``isa``: the caps only (oneDNN's AVX2
    kernels stay, faster, but their blocking may follow the cache sizes of the CPU); None: off."""
    value = os.environ.get(ENV_FLAG, "").strip().lower()
    if value in {"1", "true", "yes", "on", "strict"}:
        return "strict"
    return "isa" if value == "isa" else None


def enable() -> dict[str, str]:
    """Pin instruction sets, oneDNN and threads; returns what was set (also for child processes:
    Ray workers inherit the environment)."""
    for key, value in CAPS.items():
        os.environ.setdefault(key, value)
    import torch

    torch.backends.mkldnn.enabled = requested() == "isa"
    if os.environ.get("FEDRS_THREADS"):
        torch.set_num_threads(int(os.environ["FEDRS_THREADS"]))
    return {k: os.environ[k] for k in CAPS}


def enable_from_environment() -> None:
    if requested():
        enable()


def describe() -> dict[str, str | bool]:
    """How this process computes, for the records of a run."""
    import torch

    return {"reproducible": requested() or "off", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": bool(torch.backends.mkldnn.enabled), "threads": str(torch.get_num_threads())}
