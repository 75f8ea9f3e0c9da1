"""Content-addressed array cache: a result is stored under the digest of everything it depends on,
so an unchanged input reuses it and any change (weights, data, settings) misses and recomputes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrs.datasets._files import atomic_path


def content_digest(*parts: Any) -> str:
    """SHA-256 (16 hex digits) over arrays, tensors, state dicts and JSON-able values, in order."""
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            h.update(f"{value.dtype}{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, Mapping):
            for key in sorted(value):
                h.update(str(key).encode())
                feed(value[key])
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())

    for part in parts:
        feed(part)
    return h.hexdigest()[:16]


def cached_array(cache_dir: str | Path | None, key: str, compute: Callable[[], np.ndarray],
                 refresh: bool = False) -> tuple[np.ndarray, bool]:
    """``compute()`` or the array stored under ``key``; returns (array, hit). No cache_dir: no
    caching; ``refresh``: compute and overwrite what is stored."""
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file() and not refresh:
        return np.load(path), True
    array = compute()
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return array, False
