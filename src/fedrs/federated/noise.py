"""Where privacy noise comes from: the operating system's CSPRNG, value by value (``SecretNoise``),
or — only for tests, with ``deterministic_noise`` — a torch generator seeded from the run (anyone can
reproduce and remove such noise; the runs say so).

Every DP release, exchange protection, DP-SGD step and its Poisson batches draws from here."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["Noise", "SecretNoise", "gaussian", "noise_generator", "uniform"]


class SecretNoise:
    """Draws straight from the operating system's CSPRNG (``os.urandom``), for every value.

    Why not a torch generator seeded with secret bits: torch's CPU generator is a Mersenne Twister,
    whose whole state follows from a few hundred of its outputs — and a release can show pure noise
    (a class a client does not hold sends its noise alone), so whoever saw one release could predict
    and subtract the rest."""

    @staticmethod
    def uniform(count: int) -> np.ndarray:
        """``count`` float64 values uniform on [0, 1), 53 random bits each."""
        words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(11)
        return words.astype(np.float64) * 2.0 ** -53

    def rand(self, shape: Sequence[int] | int) -> torch.Tensor:
        size = (shape,) if isinstance(shape, int) else tuple(shape)
        return torch.from_numpy(self.uniform(math.prod(size)).reshape(size))

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Standard normal values (Box–Muller on CSPRNG uniforms)."""
        size = tuple(shape)
        n = math.prod(size)
        pairs = (n + 1) // 2
        u1, u2 = 1.0 - self.uniform(pairs), self.uniform(pairs)  # u1 in (0, 1]: the log is finite
        radius = np.sqrt(-2.0 * np.log(u1))
        values = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:n]
        return torch.from_numpy(values.reshape(size)).to(dtype)


Noise = torch.Generator | SecretNoise


def noise_generator(deterministic_seed: int | None = None) -> Noise:
    """Where one release draws its noise from: the OS's CSPRNG value by value (``SecretNoise``),
    known to nobody else. ``deterministic_seed`` (only with ``deterministic_noise``, for tests): a
    torch generator seeded with it, so the noise can be reproduced — and removed."""
    if deterministic_seed is None:
        return SecretNoise()
    return torch.Generator().manual_seed(int(deterministic_seed))


def gaussian(shape: Sequence[int], noise: Noise) -> torch.Tensor:
    """Standard normal float64 values from ``noise`` (the CSPRNG, or a seeded generator in tests)."""
    if isinstance(noise, SecretNoise):
        return noise.randn(shape)
    return torch.randn(tuple(shape), generator=noise, dtype=torch.float64)


def uniform(count: int, noise: Noise) -> torch.Tensor:
    """``count`` values uniform on [0, 1) from ``noise``."""
    if isinstance(noise, SecretNoise):
        return noise.rand(count)
    return torch.rand(count, generator=noise)


