"""The communication codec: the one way a tensor is compressed before it crosses the network.

A tensor is viewed as a matrix (the first ``row_dims`` axes form the rows), factorised by a
truncated randomized SVD to a fixed rank or to the smallest rank keeping a fraction of its energy
(squared Frobenius norm), and its factors are optionally quantised to 8 bits (min–max per factor).
When the factors would not be smaller than the tensor itself, it is sent dense. ``ErrorFeedback``
carries what compression lost into the next round's update, so nothing is lost for good.

Byte counts are exact for the payload (factors or dense values, plus 8 bytes of min/scale per
quantised factor); message framing is counted separately by Flower's own record sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedrs.config import from_mapping


@dataclass(frozen=True)
class CodecConfig:
    rank: int | None = 4              # at most this rank (None: no fixed cap)
    energy: float | None = None       # or the smallest rank keeping this energy fraction (e.g. 0.99)
    quantize_bits: int | None = None  # 8: min–max quantised factors; None: float32 factors
    oversample: int = 4               # extra random directions of the randomized SVD
    power_iterations: int = 2
    min_elements: int = 256           # smaller tensors always go dense
    row_dims: int = 1                 # leading axes forming the matrix rows
    seed: int = 0
    error_feedback: bool = True       # carry what compression drops into the next payload

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CodecConfig:
        cfg = from_mapping(cls, d, label="codec config")
        if cfg.rank is None and cfg.energy is None:
            raise ValueError("codec config: set rank, energy or both")
        if cfg.energy is not None and not 0.0 < cfg.energy <= 1.0:
            raise ValueError(f"codec config: energy {cfg.energy}; expected a fraction in (0, 1]")
        if cfg.quantize_bits not in (None, 8):
            raise ValueError(f"codec config: quantize_bits {cfg.quantize_bits}; expected 8 or null")
        return cfg


@dataclass
class Quantised:
    codes: np.ndarray      # uint8
    low: float
    scale: float

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes) + 8

    def dequantise(self) -> np.ndarray:
        return self.codes.astype(np.float32) * np.float32(self.scale) + np.float32(self.low)


def quantise(x: np.ndarray) -> Quantised:
    low, high = float(x.min()), float(x.max())
    scale = (high - low) / 255.0 if high > low else 1.0
    codes = np.clip(np.rint((x - low) / scale), 0, 255).astype(np.uint8)
    return Quantised(codes, low, scale)


@dataclass
class Encoded:
    """One tensor as sent: dense values, or two (possibly quantised) factors ``left @ right``."""

    shape: tuple[int, ...]
    dense: np.ndarray | None = None
    left: np.ndarray | Quantised | None = None
    right: np.ndarray | Quantised | None = None
    rank: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "dense" if self.dense is not None else "lowrank"

    @property
    def nbytes(self) -> int:
        if self.dense is not None:
            return int(self.dense.nbytes)
        assert self.left is not None and self.right is not None
        return int(self.left.nbytes) + int(self.right.nbytes)

    @property
    def dense_nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4


def _matrix_shape(shape: tuple[int, ...], row_dims: int) -> tuple[int, int]:
    rows = int(np.prod(shape[:row_dims])) if row_dims else 1
    return rows, int(np.prod(shape)) // max(rows, 1)


def _choose_rank(singular: torch.Tensor, total_energy: float, cfg: CodecConfig) -> int:
    k = singular.numel() if cfg.rank is None else min(cfg.rank, singular.numel())
    if cfg.energy is not None and total_energy > 0:
        kept = torch.cumsum(singular.double() ** 2, 0) / total_energy
        reach = int(torch.searchsorted(kept, torch.tensor(cfg.energy, dtype=kept.dtype)).item()) + 1
        k = min(k, reach, singular.numel())
    return max(k, 1)


def encode(tensor: torch.Tensor, cfg: CodecConfig) -> Encoded:
    x = tensor.detach().float().cpu()
    shape = tuple(x.shape)
    if x.ndim < 2 or x.numel() < cfg.min_elements:
        return Encoded(shape, dense=x.numpy().copy())
    m, n = _matrix_shape(shape, cfg.row_dims)
    matrix = x.reshape(m, n)
    cap = min(m, n) if cfg.rank is None else min(cfg.rank, m, n)
    bytes_per = 1 if cfg.quantize_bits else 4
    smallest_rank = cap if cfg.energy is None else 1
    if (m * smallest_rank + smallest_rank * n) * bytes_per + (16 if cfg.quantize_bits else 0) >= m * n * 4:
        return Encoded(shape, dense=x.numpy().copy())  # no rank could pay: skip the SVD
    q = min(min(m, n), (cap if cfg.energy is None else min(m, n)) + cfg.oversample)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # the random sketch is reproducible and does not disturb training RNG
    u, s, v = torch.svd_lowrank(matrix, q=q, niter=cfg.power_iterations)
    torch.random.set_rng_state(generator_state)
    k = _choose_rank(s, float(matrix.double().pow(2).sum()), cfg)
    left = (u[:, :k] * s[:k]).numpy()
    right = v[:, :k].T.contiguous().numpy()
    if cfg.quantize_bits:
        encoded = Encoded(shape, left=quantise(left), right=quantise(right), rank=k)
    else:
        encoded = Encoded(shape, left=left.copy(), right=right.copy(), rank=k)
    if encoded.nbytes >= m * n * 4:  # the factors are not smaller: send the tensor itself
        return Encoded(shape, dense=x.numpy().copy())
    return encoded


def decode(encoded: Encoded) -> torch.Tensor:
    if encoded.dense is not None:
        return torch.from_numpy(np.asarray(encoded.dense, dtype=np.float32).reshape(encoded.shape))
    assert encoded.left is not None and encoded.right is not None
    left = encoded.left.dequantise() if isinstance(encoded.left, Quantised) else encoded.left
    right = encoded.right.dequantise() if isinstance(encoded.right, Quantised) else encoded.right
    return torch.from_numpy((left @ right).astype(np.float32).reshape(encoded.shape))


class ErrorFeedback:
    """Per-tensor residuals: what compression dropped is added to the next update before encoding."""

    def __init__(self) -> None:
        self.residual: dict[str, torch.Tensor] = {}

    def encode(self, name: str, update: torch.Tensor, cfg: CodecConfig) -> Encoded:
        if not cfg.error_feedback:
            return encode(update, cfg)
        corrected = update.detach().float() + self.residual.get(name, torch.zeros_like(update, dtype=torch.float32))
        encoded = encode(corrected, cfg)
        self.residual[name] = corrected - decode(encoded)
        return encoded

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.residual)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor] | None) -> ErrorFeedback:
        feedback = cls()
        feedback.residual = dict(state or {})
        return feedback
