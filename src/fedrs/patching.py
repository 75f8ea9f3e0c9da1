"""Normalisation and patch extraction: the one implementation every model and pipeline uses.

- Normalisation statistics are fitted on training pixels only (no test information leaks) and are
  per channel: ``minmax`` maps the training range to [-1, 1] (what the diffusion model expects),
  ``standard`` to zero mean, unit variance.
- Patches are P×P windows (P odd) centred on a pixel, with reflect padding at the scene border,
  gathered in one vectorised step from a strided view of the padded, pixel-major cube.
- The diffusion U-Net takes 8×8 inputs: ``resize_patches`` brings P×P patches there by bilinear
  interpolation (``align_corners=False``), as the FedDiff authors' code does. This is the only
  place that resize happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fedrs.errors import InputError

NORMALISATION_METHODS = ("minmax", "standard")


def fit_normaliser(cube: np.ndarray, mask: np.ndarray, method: str = "minmax") -> dict[str, Any]:
    """Per-channel ``offset`` and ``scale`` from the pixels where ``mask`` is true.

    ``cube`` is [channels, H, W]; the normalised value is ``(x - offset) / scale``.
    """
    if method not in NORMALISATION_METHODS:
        raise InputError(f"normalisation method {method!r}; expected one of {NORMALISATION_METHODS}")
    if not mask.any():
        raise InputError("normalisation needs at least one training pixel; the mask is empty")
    pixels = cube[:, mask].astype(np.float64)  # [channels, n_train]
    if method == "minmax":
        lo, hi = pixels.min(axis=1), pixels.max(axis=1)
        offset, scale = (hi + lo) / 2.0, (hi - lo) / 2.0
    else:
        offset, scale = pixels.mean(axis=1), pixels.std(axis=1)
    # a constant channel (e.g. a flat LiDAR return) stays constant instead of dividing by zero
    scale = np.where(scale > 1e-12, scale, 1.0)
    return {"method": method, "offset": offset.tolist(), "scale": scale.tolist()}


def apply_normaliser(cube: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    offset = np.asarray(stats["offset"], dtype=np.float32)
    scale = np.asarray(stats["scale"], dtype=np.float32)
    if offset.size != cube.shape[0]:
        raise InputError(
            f"normalisation statistics are for {offset.size} channels but the cube has {cube.shape[0]}"
        )
    shape = (-1,) + (1,) * (cube.ndim - 1)
    return ((cube.astype(np.float32) - offset.reshape(shape)) / scale.reshape(shape)).astype(np.float32)


class PatchExtractor:
    """P×P patches of one [channels, H, W] cube around any pixels, with reflect padding.

    The cube is padded and laid out pixel-major once; each call is then a single gather from a
    strided window view, so a batch of N patches costs one copy of N·C·P² values.
    """

    def __init__(self, cube: np.ndarray, patch_size: int):
        if patch_size < 1 or patch_size % 2 == 0:
            raise InputError(f"patch_size {patch_size}; expected an odd number ≥ 1")
        half = patch_size // 2
        _, height, width = cube.shape
        if half >= min(height, width):
            raise InputError(
                f"patch_size {patch_size} needs a scene larger than {half} px per side; got {height}×{width}"
            )
        self.patch_size = patch_size
        self.shape = (height, width)
        padded = np.pad(cube.transpose(1, 2, 0), ((half, half), (half, half), (0, 0)), mode="reflect")
        self._windows = sliding_window_view(np.ascontiguousarray(padded, dtype=np.float32),
                                            (patch_size, patch_size), axis=(0, 1))  # [H, W, C, P, P]

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Patches [N, C, P, P] centred on (rows[i], cols[i])."""
        return np.ascontiguousarray(self._windows[np.asarray(rows), np.asarray(cols)])


def extract_patches(cube: np.ndarray, rows: np.ndarray, cols: np.ndarray, patch_size: int) -> np.ndarray:
    return PatchExtractor(cube, patch_size)(rows, cols)


def labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, cols (row-major order) and 0-based class indices of the labelled pixels."""
    rows, cols = np.nonzero(labels > 0)
    return rows.astype(np.int32), cols.astype(np.int32), (labels[rows, cols] - 1).astype(np.int64)


def iter_pixel_batches(shape: tuple[int, int], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pixel of an H×W grid, row-major, in batches of (rows, cols)."""
    height, width = shape
    total = height * width
    for start in range(0, total, batch_size):
        flat = np.arange(start, min(start + batch_size, total))
        yield (flat // width).astype(np.int32), (flat % width).astype(np.int32)


def iter_scene_patches(
    hsi: np.ndarray, lidar: np.ndarray, patch_size: int, batch_size: int = 4096
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, cols, hsi_patches, lidar_patches) over every pixel: for full-scene maps.

    Inputs are normalised cubes; memory stays at one batch of patches, whatever the scene size.
    """
    hsi_patches = PatchExtractor(hsi, patch_size)
    lidar_patches = PatchExtractor(lidar, patch_size)
    for rows, cols in iter_pixel_batches(hsi.shape[1:], batch_size):
        yield rows, cols, hsi_patches(rows, cols), lidar_patches(rows, cols)


def resize_patches(patches, size: int = 8):
    """[N, C, P, P] → [N, C, size, size] by bilinear interpolation (torch tensors or NumPy)."""
    import torch
    import torch.nn.functional as F

    as_numpy = isinstance(patches, np.ndarray)
    tensor = torch.from_numpy(patches) if as_numpy else patches
    if tensor.shape[-1] == size and tensor.shape[-2] == size:
        out = tensor
    else:
        out = F.interpolate(tensor.float(), size=(size, size), mode="bilinear", align_corners=False)
    return out.numpy() if as_numpy else out
