"""Raw rasters → the validated ``scene`` (the contract of ../shared/spec/architecture.md).

A scene is a plain dict so it travels through the catalog as an ``NpzDataset`` bundle:

- ``hsi`` float32 [bands, H, W]; ``lidar`` float32 [channels, H, W]
- ``train_labels``, ``test_labels`` int16 [H, W]: 0 unlabelled, 1..K
- ``class_names`` (K names), ``wavelengths`` (nm, or None), ``crs`` (WKT or None),
  ``transform`` (6 affine coefficients or None), ``name``, ``sources`` (file of each layer),
  ``invalid_pixels`` (pixels masked for NaN/inf/nodata), ``split`` (how train/test came to be).

Every rule here raises ``InputError`` naming the file, the value and what was expected, before
the node returns — so Kedro writes nothing for a bad scene.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedrs.datasets.raster import Raster
from fedrs.errors import InputError

logger = logging.getLogger(__name__)

INVALID_POLICIES = ("refuse", "mask")
SPLIT_METHODS = ("given", "random_per_class")


def _check_grids(hsi: Raster, lidar: Raster, labels: list[Raster]) -> None:
    for other in [lidar, *labels]:
        if other.shape != hsi.shape:
            raise InputError(
                f"Grids differ: {hsi.source} is {hsi.shape[0]}×{hsi.shape[1]} (rows×cols) but "
                f"{other.source} is {other.shape[0]}×{other.shape[1]}; expected co-registered rasters "
                "on one grid"
            )
        if hsi.transform and other.transform and not np.allclose(hsi.transform, other.transform):
            raise InputError(
                f"Grids differ: {hsi.source} has transform {tuple(hsi.transform)} but {other.source} "
                f"has {tuple(other.transform)}; expected the same georeferencing"
            )
    if hsi.crs and lidar.crs and hsi.crs != lidar.crs:
        raise InputError(f"CRS differ: {hsi.source} and {lidar.source} are in different reference systems")


def _invalid_mask(raster: Raster) -> np.ndarray:
    bad = ~np.isfinite(raster.data).all(axis=0) if np.issubdtype(raster.data.dtype, np.floating) else \
        np.zeros(raster.shape, dtype=bool)
    if raster.nodata is not None and np.isfinite(raster.nodata):
        bad |= (raster.data == raster.nodata).any(axis=0)
    return bad


def _clean_values(raster: Raster, policy: str, label_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 copy with NaN/inf/nodata handled by ``policy``; returns (data, invalid pixel mask)."""
    data = raster.data.astype(np.float32, copy=True)
    bad = _invalid_mask(raster)
    if not bad.any():
        return data, bad
    r, c = (int(v[0]) for v in np.nonzero(bad))
    if policy == "refuse":
        raise InputError(
            f"{raster.source}: {int(bad.sum())} pixels hold NaN, inf or nodata ({raster.nodata}), "
            f"first at row {r}, col {c}; expected finite values (set scene.invalid_values: mask "
            "to drop those pixels instead)"
        )
    # mask: fill with the band median of valid pixels so patches stay finite; labels drop them
    for band in range(data.shape[0]):
        valid = data[band][~bad]
        data[band][bad] = np.median(valid[np.isfinite(valid)]) if valid.size else 0.0
    logger.warning("%s: masked %d invalid pixels (%d of them labelled)", raster.source, bad.sum(),
                   int((bad & label_mask).sum()))
    return data, bad


def _labels(raster: Raster, unlabelled_value: int) -> np.ndarray:
    if raster.data.shape[0] != 1:
        raise InputError(f"{raster.source}: label raster has {raster.data.shape[0]} bands; expected 1")
    values = raster.data[0]
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all() or not np.equal(np.mod(values, 1), 0).all():
            raise InputError(f"{raster.source}: labels hold non-integer values; expected class numbers")
    values = values.astype(np.int64)
    if unlabelled_value != 0:
        values = np.where(values == unlabelled_value, 0, values)
    return values


def _class_names(params: dict, rasters: list[Raster], max_label: int) -> list[str]:
    names = params.get("class_names")
    if names:
        return [str(n) for n in names]
    for raster in rasters:
        meta_names = raster.meta.get("class_names")
        if isinstance(meta_names, str) and meta_names:
            meta_names = meta_names.split("|")
        if meta_names:
            return [str(n) for n in meta_names]
    return [f"class_{k}" for k in range(1, max_label + 1)]


def _random_split(
    all_labels: np.ndarray, num_classes: int, n_per_class: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class draw: ``n_per_class`` pixels (int) or that fraction (<1) of each class."""
    rng = np.random.default_rng(seed)
    train = np.zeros_like(all_labels)
    flat = all_labels.ravel()
    for klass in range(1, num_classes + 1):
        idx = np.flatnonzero(flat == klass)
        if idx.size == 0:
            continue
        k = int(round(n_per_class * idx.size)) if n_per_class < 1 else int(n_per_class)
        if k >= idx.size:
            k = max(1, idx.size // 2)
            logger.warning("class %d has only %d labelled pixels: drawing %d for training", klass, idx.size, k)
        train.ravel()[rng.choice(idx, size=max(k, 1), replace=False)] = klass
    test = np.where(train > 0, 0, all_labels)
    return train, test


def _check_label_range(raster: Raster, values: np.ndarray, class_names: list[str]) -> None:
    k = len(class_names)
    outside = (values < 0) | (values > k)
    if outside.any():
        bad_values = np.unique(values[outside])[:5].tolist()
        raise InputError(
            f"{raster.source}: label values {bad_values} are outside 0..{k}; expected 0 for "
            f"unlabelled and 1..{k} for the {k} classes {class_names}"
        )


def _apply_split(train: np.ndarray, test: np.ndarray, split: dict[str, Any], k: int, train_labels: Raster,
                 test_labels: Raster) -> tuple[np.ndarray, np.ndarray]:
    """The given split (checked disjoint), or a seeded per-class draw from the union of both layers."""
    if split.get("method", "given") == "random_per_class":
        conflict = (train > 0) & (test > 0) & (train != test)
        if conflict.any():
            raise InputError(
                f"{train_labels.source} and {test_labels.source} give different classes to "
                f"{int(conflict.sum())} pixels; expected one labelling to draw a split from"
            )
        all_labels = np.maximum(train, test)
        return _random_split(all_labels, k, float(split.get("n_per_class", 20)), int(split.get("seed", 0)))
    overlap = (train > 0) & (test > 0)
    if overlap.any():
        r, c = (int(v[0]) for v in np.nonzero(overlap))
        raise InputError(
            f"{train_labels.source} and {test_labels.source} overlap on {int(overlap.sum())} pixels "
            f"(first at row {r}, col {c}); expected disjoint training and test pixels"
        )
    return train, test


def _require_every_class(train: np.ndarray, class_names: list[str], source: str) -> None:
    counts = np.bincount(train.ravel(), minlength=len(class_names) + 1)[1:]
    missing = [f"{i + 1} ({class_names[i]})" for i in np.flatnonzero(counts == 0)]
    if missing:
        raise InputError(
            f"{source}: classes {', '.join(missing)} have no training pixel; expected at "
            "least one per class (check class_names and the split)"
        )


def _wavelengths(params: dict[str, Any], hsi: Raster) -> list[float] | None:
    """One wavelength per band: the parameter's list or [first_nm, last_nm] pair, else the raster's."""
    wavelengths = params.get("wavelengths")
    if wavelengths is None and hsi.meta.get("wavelengths"):
        wavelengths = [float(w) for w in str(hsi.meta["wavelengths"]).split(",")]
    elif wavelengths is not None and len(wavelengths) == 2 and hsi.data.shape[0] != 2:
        wavelengths = np.linspace(float(wavelengths[0]), float(wavelengths[1]), hsi.data.shape[0]).tolist()
    if wavelengths is not None and len(wavelengths) != hsi.data.shape[0]:
        raise InputError(
            f"parameter scene.wavelengths has {len(wavelengths)} values but {hsi.source} has "
            f"{hsi.data.shape[0]} bands; expected one per band or a [first_nm, last_nm] pair"
        )
    return None if wavelengths is None else [float(w) for w in wavelengths]


def assemble_scene(
    hsi: Raster, lidar: Raster, train_labels: Raster, test_labels: Raster, params: dict[str, Any]
) -> dict[str, Any]:
    """Validate raw layers and build the scene dict (see module docstring)."""
    policy = params.get("invalid_values", "refuse")
    if policy not in INVALID_POLICIES:
        raise InputError(f"parameter scene.invalid_values is {policy!r}; expected one of {INVALID_POLICIES}")
    split = dict(params.get("split") or {"method": "given"})
    if split.get("method", "given") not in SPLIT_METHODS:
        raise InputError(f"parameter scene.split.method is {split.get('method')!r}; expected one of {SPLIT_METHODS}")

    _check_grids(hsi, lidar, [train_labels, test_labels])
    unlabelled = int(params.get("unlabelled_value", 0))
    train = _labels(train_labels, unlabelled)
    test = _labels(test_labels, unlabelled)

    max_label = int(max(train.max(), test.max()))
    class_names = _class_names(params, [train_labels, test_labels, hsi], max_label)
    k = len(class_names)
    for raster, values in ((train_labels, train), (test_labels, test)):
        _check_label_range(raster, values, class_names)
    train, test = _apply_split(train, test, split, k, train_labels, test_labels)

    labelled = (train > 0) | (test > 0)
    hsi_data, hsi_bad = _clean_values(hsi, policy, labelled)
    lidar_data, lidar_bad = _clean_values(lidar, policy, labelled)
    invalid = hsi_bad | lidar_bad
    train[invalid] = 0
    test[invalid] = 0
    _require_every_class(train, class_names, train_labels.source)
    wavelengths = _wavelengths(params, hsi)

    scene = {
        "name": str(params.get("name", "scene")),
        "hsi": hsi_data,
        "lidar": lidar_data,
        "train_labels": train.astype(np.int16),
        "test_labels": test.astype(np.int16),
        "class_names": class_names,
        "wavelengths": wavelengths,
        "crs": hsi.crs or lidar.crs,
        "transform": list(hsi.transform or lidar.transform or []) or None,
        "sources": {
            "hsi": hsi.source,
            "lidar": lidar.source,
            "train_labels": train_labels.source,
            "test_labels": test_labels.source,
        },
        "invalid_pixels": int(invalid.sum()),
        "split": split,
    }
    check_scene(scene)
    logger.info("Scene %s: %d×%d px, %d HSI bands, %d LiDAR channels, %d classes, %d train / %d test pixels",
                scene["name"], *hsi.shape, hsi_data.shape[0], lidar_data.shape[0], k, int((train > 0).sum()),
                int((test > 0).sum()))
    return scene


def check_scene(scene: dict[str, Any]) -> None:
    """Assert the scene contract (cheap); used on the way out of ingest and into patches."""
    required = ("hsi", "lidar", "train_labels", "test_labels", "class_names")
    missing = [key for key in required if key not in scene]
    if missing:
        raise InputError(f"scene lacks {missing}; expected the keys {list(required)}")
    hsi, lidar = scene["hsi"], scene["lidar"]
    if hsi.ndim != 3 or lidar.ndim != 3:
        raise InputError(f"scene: hsi {hsi.shape} and lidar {lidar.shape} must be [channels, H, W]")
    grid = hsi.shape[1:]
    for key in ("lidar", "train_labels", "test_labels"):
        shape = scene[key].shape[-2:]
        if shape != grid:
            raise InputError(f"scene: {key} grid {shape} differs from hsi grid {grid}")
    k = len(scene["class_names"])
    for key in ("train_labels", "test_labels"):
        labels = scene[key]
        if labels.min() < 0 or labels.max() > k:
            raise InputError(f"scene: {key} has values {labels.min()}..{labels.max()}; expected 0..{k}")
    if ((scene["train_labels"] > 0) & (scene["test_labels"] > 0)).any():
        raise InputError("scene: training and test pixels overlap")
