"""Bit-identical numbers across CPU kinds: ``FEDRS_REPRODUCIBLE=1`` (``make run REPRODUCIBLE=1``).

fp32 alone does not make a run repeat on another CPU: PyTorch, MKL, oneDNN, NNPACK, NumPy and
OpenBLAS pick kernels by instruction set (AVX-512 on one server, AVX2 on the next), by CPU vendor
and by cache sizes; the kernels add in different orders, and training amplifies the last-bit
differences into different metrics. The strict level pins every one of them, each found by
``bench/bench_reproducible.py --trace`` (the first operation whose bits differ between two
machines, or under ``qemu-x86_64 -cpu <model>``):

- ``ATEN_CPU_CAPABILITY=avx2``: PyTorch's own vectorised kernels at AVX2;
- ``MKL_CBWR=AVX2,STRICT`` (and ``MKL_ENABLE_INSTRUCTIONS=AVX2``): MKL's float32 GEMM — under
  convolutions and linear layers — gives the same bits on any AVX2 CPU, Intel or AMD;
- MKL's vector math, FFT and float64 GEMM do not obey that on AMD CPUs: ``fedrs.portable``
  replaces those operations' CPU kernels with NumPy's;
- NumPy and its OpenBLAS at AVX2 (``NPY_DISABLE_CPU_FEATURES``, ``OPENBLAS_CORETYPE=Haswell``):
  their AVX-512 exp/log/pow and GEMM round differently — this must be in the environment before
  NumPy loads, which ``import fedrs`` arranges when it comes first (``kedro run``, the Makefile);
- oneDNN off (``torch.backends.mkldnn.enabled = False``, ``ONEDNN_MAX_CPU_ISA=AVX2`` for any use
  that remains) and NNPACK off: NNPACK, the convolution path PyTorch takes once oneDNN is off,
  sizes its Winograd tiles and reduction blocks from the CPU's cache sizes. Convolutions go
  through ATen's im2col + MKL GEMM;
- the thread count decides how parallel reductions split: pinned to ``FEDRS_THREADS``, else the
  ``OMP_NUM_THREADS`` a launcher set (Ray sets it per simulated client), else 2 — whatever the
  number of cores.

``isa`` sets the caps alone and keeps oneDNN (faster; its blocking may follow the CPU's cache
sizes). Everything must be set before the first torch operation; ``fedrs/__init__.py`` calls
``enable_from_environment`` on import. The cost is measured by ``bench/bench_reproducible.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

ENV_FLAG = "FEDRS_REPRODUCIBLE"
CAPS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": "Haswell",
}
# strict only, and whatever the environment says: OpenBLAS splits a product differently with
# another thread count (and its spinning threads would fight PyTorch's for the cores)
STRICT_ENV = {"OPENBLAS_NUM_THREADS": "1"}
STRICT_THREADS = 2


class ReproducibleModeError(RuntimeError):
    """The strict mode cannot hold in this process (NumPy was loaded before it was set)."""


def requested() -> str | None:
    """``strict`` (``1``, ``true``): the caps and oneDNN off; ``isa``: the caps only (oneDNN's AVX2
    kernels stay, faster, but their blocking may follow the cache sizes of the CPU); None: off."""
    value = os.environ.get(ENV_FLAG, "").strip().lower()
    if value in {"1", "true", "yes", "on", "strict"}:
        return "strict"
    return "isa" if value == "isa" else None


def numpy_capped() -> bool:
    """Whether the loaded NumPy runs no AVX-512 code (True when NumPy is not loaded yet)."""
    import sys

    if "numpy" not in sys.modules:
        return True
    from numpy._core._multiarray_umath import __cpu_features__ as features

    return not any(features.get(name) for name in CAPS["NPY_DISABLE_CPU_FEATURES"].split())


def enable() -> dict[str, str]:
    """Pin instruction sets, kernels and threads; returns what was set (also for child processes:
    Ray workers inherit the environment)."""
    strict = requested() == "strict"
    for key, value in CAPS.items():
        os.environ.setdefault(key, value)
    if strict:
        os.environ.update(STRICT_ENV)
    if strict and not numpy_capped():
        raise ReproducibleModeError(
            "FEDRS_REPRODUCIBLE=1: NumPy was imported before fedrs with its AVX-512 code on, which rounds "
            "differently from other CPUs. Set the variable before Python starts and import fedrs before NumPy "
            "(kedro run and make REPRODUCIBLE=1 do), or set these too: "
            + " ".join(f"{k}='{v}'" for k, v in {**CAPS, **STRICT_ENV}.items()))
    import torch

    torch.backends.mkldnn.enabled = not strict  # type: ignore[assignment]
    torch.backends.nnpack.set_flags(not strict)
    threads = os.environ.get("FEDRS_THREADS") or (os.environ.get("OMP_NUM_THREADS") if strict else None)
    if threads or strict:
        torch.set_num_threads(int(threads or STRICT_THREADS))
    if strict:
        from fedrs import portable

        portable.install()
    return {k: os.environ[k] for k in CAPS}


def enable_from_environment() -> None:
    if requested():
        enable()


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """A block on ``count`` PyTorch threads, then back. A federated client computes on the count its
    run configures, not on what its launcher happened to give it (Ray: the client's ``num_cpus``; a
    SuperNode: every core): parallel reductions split by thread count, and the two engines must give
    the same bits for the same seed."""
    import torch

    if count < 1:
        raise ValueError(f"client_threads is {count}; expected a whole number of at least 1")
    before = torch.get_num_threads()
    if before != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def describe() -> dict[str, str | bool]:
    """How this process computes, for the records of a run."""
    import torch

    return {"reproducible": requested() or "off", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": bool(torch.backends.mkldnn.enabled), "nnpack": bool(torch._C._get_nnpack_enabled()),
            "portable_kernels": portable_installed(), "threads": str(torch.get_num_threads())}


def portable_installed() -> bool:
    import sys

    module = sys.modules.get("fedrs.portable")
    return bool(module and module.installed())

