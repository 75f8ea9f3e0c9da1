"""Kernels whose bits do not depend on the CPU's vendor, for the reproducible mode's strict level.

PyTorch's CPU build hands some operations to Intel MKL, which picks its code by CPU vendor as well
as by instruction set — and ``MKL_CBWR`` does not pin that choice on AMD processors. Measured with
``bench/bench_reproducible.py --trace`` on an AMD EPYC and under qemu's Intel Haswell and AMD
EPYC-Rome models: MKL's vector math (``sqrt``, ``exp``, ``log``, ``sin``, ``cos``, ``atan``, ``erf``
of a whole tensor — Adam's ``sqrt`` of its second moments every step, the DDPM schedule, the
U-Net's time embedding), its FFT (the U-Net's frequency blocks) and its GEMM — for some shapes
only, float32 too (a 1-channel convolution's weight gradient; a 100×200×300 product) — give other
last bits on the other vendor; its LAPACK (the codec's QR and SVD, calibration's Cholesky) is built
on that GEMM.

``install`` replaces those operations' CPU kernels (PyTorch's dispatcher, so autograd and every
caller keep working) with NumPy's: its FFT (pocketfft, compiled for the x86-64 baseline, no runtime
dispatch), and its vector math, BLAS and LAPACK with their AVX-512 code switched off and one BLAS
thread (``NPY_DISABLE_CPU_FEATURES``, ``OPENBLAS_CORETYPE=Haswell``, ``OPENBLAS_NUM_THREADS=1``,
set by ``fedrs.reproducible`` before NumPy loads) — the code every x86-64 CPU with AVX2 runs
alike. Convolutions become im2col (copies) + NumPy GEMM, forward and backward; PyTorch's fused
attention is switched off for its plain formulation (whose products are the GEMMs above). The cost
is measured by ``bench/bench_reproducible.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# tensor-wide math that ATen sends to MKL's vector math library (aten/src/ATen/cpu/vml.h)
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sqrt": np.sqrt, "exp": np.exp, "log": np.log, "log10": np.log10, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "atan": np.arctan, "asin": np.arcsin, "acos": np.arccos, "tanh": np.tanh,
    "log1p": np.log1p, "expm1": np.expm1,
}
_LIBRARY: list[Any] = []  # the registrations live as long as the process


def installed() -> bool:
    return bool(_LIBRARY)


def _as_numpy(x: torch.Tensor) -> tuple[np.ndarray, torch.dtype]:
    """``x`` as a NumPy array NumPy can compute on (bf16/fp16 through float32), and its dtype."""
    dtype = x.dtype if (x.is_floating_point() or x.is_complex()) else torch.get_default_dtype()
    if dtype in (torch.bfloat16, torch.float16):
        return x.detach().float().numpy(), dtype
    return x.detach().to(dtype).numpy(), dtype


def _back(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def _unary_kernels(fn: Callable[[np.ndarray], np.ndarray]) -> tuple[Callable, Callable, Callable]:
    def functional(x: torch.Tensor) -> torch.Tensor:
        array, dtype = _as_numpy(x)
        with np.errstate(all="ignore"):  # NaN/inf as PyTorch gives them, silently
            return _back(fn(array), dtype)

    def inplace(x: torch.Tensor) -> torch.Tensor:
        return x.copy_(functional(x))

    def out(x: torch.Tensor, *, out: torch.Tensor) -> torch.Tensor:
        value = functional(x)
        out.resize_(value.shape)
        return out.copy_(value)

    return functional, inplace, out


def _fft_scale(shape: tuple[int, ...], dim: list[int], normalization: int) -> float:
    n = math.prod(shape[d] for d in dim)
    return {0: 1.0, 1: 1.0 / math.sqrt(n), 2: 1.0 / n}[normalization]


def _fft_c2c(x: torch.Tensor, dim: list[int], normalization: int, forward: bool) -> torch.Tensor:
    array, dtype = _as_numpy(x)
    transform = np.fft.fftn(array, axes=dim) if forward else np.fft.ifftn(array, axes=dim, norm="forward")
    return _back(transform * _fft_scale(array.shape, dim, normalization), dtype)


def _fft_r2c(x: torch.Tensor, dim: list[int], normalization: int, onesided: bool) -> torch.Tensor:
    array, dtype = _as_numpy(x)
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    transform = np.fft.rfftn(array, axes=dim) if onesided else np.fft.fftn(array, axes=dim)
    return _back(transform * _fft_scale(array.shape, dim, normalization), complex_dtype)


def _fft_c2r(x: torch.Tensor, dim: list[int], normalization: int, last_dim_size: int) -> torch.Tensor:
    array, dtype = _as_numpy(x)
    real_dtype = torch.float64 if dtype == torch.complex128 else torch.float32
    sizes = [array.shape[d] for d in dim[:-1]] + [int(last_dim_size)]
    transform = np.fft.irfftn(array, s=sizes, axes=dim, norm="forward")
    return _back(transform * _fft_scale(transform.shape, dim, normalization), real_dtype)


def _with_out(functional: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def out_variant(*args: Any, out: torch.Tensor) -> torch.Tensor:
        value = functional(*args)
        out.resize_(value.shape)
        return out.copy_(value)

    return out_variant


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (broadcast over leading dimensions) by NumPy's BLAS; bf16/fp16 through float32."""
    x, dtype = _as_numpy(a)
    y, _ = _as_numpy(b)
    return _back(np.matmul(x, y), dtype)


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1, alpha: float = 1
           ) -> torch.Tensor:
    product = _matmul(a, b)
    if alpha != 1:
        product = product * alpha
    if beta == 0:  # the bias is not read at all (nan and inf in it do not propagate), as in BLAS
        return product
    return product + (bias if beta == 1 else bias * beta)


def _baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1, alpha: float = 1
             ) -> torch.Tensor:
    return _addmm(bias, a, b, beta=beta, alpha=alpha)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _matmul(a, b)


def _conv_geometry(x: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int],
                   dilation: list[int], transposed: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], bool]:
    """A 1-D or 2-D convolution as a 2-D one: its input, weight and the unfold arguments."""
    if transposed or x.dim() not in (3, 4):
        raise NotImplementedError(f"fedrs.portable: {x.dim() - 2}-D{' transposed' if transposed else ''} "
                                  "convolutions have no portable kernel (FEDRS_REPRODUCIBLE=1)")
    one_d = x.dim() == 3
    if one_d:
        x, weight = x.unsqueeze(2), weight.unsqueeze(2)
        stride, padding, dilation = [1, *stride], [0, *padding], [1, *dilation]
    geometry = {"kernel_size": tuple(weight.shape[2:]), "dilation": tuple(dilation), "padding": tuple(padding),
                "stride": tuple(stride)}
    return x, weight, geometry, one_d


def _im2col(x: torch.Tensor, kernel_size: tuple[int, ...], dilation: tuple[int, ...], padding: tuple[int, ...],
            stride: tuple[int, ...]) -> torch.Tensor:
    """What ``torch.nn.functional.unfold`` gives ([N, C·kh·kw, L]), as one strided copy (unfold's own
    kernel is several times slower here)."""
    padded = torch.nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    n, c, h, w = padded.shape
    (kh, kw), (dh, dw), (sh, sw) = kernel_size, dilation, stride
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    sn, sc, s_h, s_w = padded.stride()
    view = padded.as_strided((n, c, kh, kw, ho, wo), (sn, sc, s_h * dh, s_w * dw, s_h * sh, s_w * sw))
    return view.reshape(n, c * kh * kw, ho * wo)


def _convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
                 padding: list[int], dilation: list[int], transposed: bool, output_padding: list[int],
                 groups: int) -> torch.Tensor:
    """im2col (copies only) and one GEMM per sample and group (NumPy's BLAS)."""
    x2, w2, geometry, one_d = _conv_geometry(x, weight, stride, padding, dilation, transposed)
    n, o = x2.shape[0], w2.shape[0]
    cols = _im2col(x2, **geometry)  # [N, C·kh·kw, L]
    out = _matmul(w2.reshape(groups, o // groups, -1), cols.reshape(n, groups, -1, cols.shape[-1]))
    size = [(x2.shape[2 + i] + 2 * geometry["padding"][i] - geometry["dilation"][i] * (w2.shape[2 + i] - 1) - 1)
            // geometry["stride"][i] + 1 for i in range(2)]
    out = out.reshape(n, o, *size)
    if bias is not None:
        out = out + bias.reshape(1, o, 1, 1)
    return out.squeeze(2) if one_d else out


def _convolution_backward(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          bias_sizes: list[int] | None, stride: list[int], padding: list[int], dilation: list[int],
                          transposed: bool, output_padding: list[int], groups: int, output_mask: list[bool]
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    x2, w2, geometry, one_d = _conv_geometry(x, weight, stride, padding, dilation, transposed)
    go = grad_output.unsqueeze(2) if one_d else grad_output
    n, o, length = go.shape[0], go.shape[1], go.shape[2] * go.shape[3]
    go = go.reshape(n, groups, o // groups, length)
    kernel = w2.reshape(groups, o // groups, -1)
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        cols = _matmul(kernel.transpose(1, 2), go).reshape(n, -1, length)
        grad_input = torch.nn.functional.fold(cols, output_size=tuple(x2.shape[2:]), **geometry)
        grad_input = grad_input.squeeze(2) if one_d else grad_input
    if output_mask[1]:
        cols = _im2col(x2, **geometry).reshape(n, groups, -1, length)
        # one GEMM over every sample's positions: [g, O/g, N·L] @ [g, N·L, K]
        grad_weight = _matmul(go.permute(1, 2, 0, 3).reshape(groups, o // groups, n * length),
                              cols.permute(1, 0, 3, 2).reshape(groups, n * length, -1)).reshape(weight.shape)
    if output_mask[2]:
        grad_bias = go.reshape(n, o, length).transpose(0, 1).reshape(o, -1).sum(1)
    return grad_input, grad_weight, grad_bias


def _cholesky(a: torch.Tensor, *, upper: bool = False, check_errors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    array, dtype = _as_numpy(a)
    info = torch.zeros(array.shape[:-2], dtype=torch.int32)
    try:
        lower = np.linalg.cholesky(array)
    except np.linalg.LinAlgError:
        info.fill_(1)  # not positive definite: linalg.cholesky raises on a non-zero info, as PyTorch's does
        return torch.full(array.shape, float("nan"), dtype=dtype), info
    factor = np.swapaxes(lower, -1, -2).conj() if upper else lower
    return _back(factor, dtype), info


def _qr(a: torch.Tensor, mode: str = "reduced") -> tuple[torch.Tensor, torch.Tensor]:
    array, dtype = _as_numpy(a)
    q, r = np.linalg.qr(array, mode="complete" if mode == "complete" else "reduced")
    return (torch.empty(0, dtype=dtype) if mode == "r" else _back(q, dtype)), _back(r, dtype)


def _svd(a: torch.Tensor, full_matrices: bool = False, compute_uv: bool = True, *, driver: str | None = None
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    array, dtype = _as_numpy(a)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    if not compute_uv:
        nothing = torch.empty(0, dtype=dtype)
        return nothing, _back(np.linalg.svd(array, compute_uv=False), real), nothing
    u, s, vh = np.linalg.svd(array, full_matrices=full_matrices)
    return _back(u, dtype), _back(s, real), _back(vh, dtype)


def install() -> None:
    """Route the vendor-dependent operations through the kernels above (once per process)."""
    if _LIBRARY:
        return
    import warnings

    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "overriding a previously registered kernel" is the point
        warnings.simplefilter("ignore")
        for name, math_fn in _UNARY.items():
            functional, inplace, out = _unary_kernels(math_fn)
            library.impl(name, functional, "CPU")
            library.impl(f"{name}_", inplace, "CPU")
            library.impl(f"{name}.out", out, "CPU")
        kernels: dict[str, Callable[..., Any]] = {
            "_fft_c2c": _fft_c2c, "_fft_r2c": _fft_r2c, "_fft_c2r": _fft_c2r,
            "mm": _matmul, "bmm": _matmul, "mv": _matmul, "dot": _dot, "addmm": _addmm, "baddbmm": _baddbmm,
            "convolution": _convolution, "convolution_backward": _convolution_backward,
            "linalg_cholesky_ex": _cholesky, "linalg_qr": _qr, "_linalg_svd": _svd,
        }
        for name, kernel in kernels.items():
            library.impl(name, kernel, "CPU")
            if name.startswith("_fft"):
                library.impl(f"{name}.out", _with_out(kernel), "CPU")
    # PyTorch's fused CPU attention runs its GEMMs inside; the plain formulation calls the ones above
    torch.backends.cuda.enable_flash_sdp(False)
    _LIBRARY.append(library)
