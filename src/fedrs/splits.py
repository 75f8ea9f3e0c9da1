"""Validation and cross-validation folds carved from the training ROIs by blob, and the masked
cubes that keep patches spatially disjoint.

Why by blob: neighbouring pixels of one ROI are near-copies of each other, so a random pixel split
puts a validation pixel's twin (and its whole 7×7 window) in training and measures memory, not
generalisation (Nalepa et al., IEEE GRSL 2019). A blob is a connected component (8-neighbourhood)
of same-class training pixels; a blob larger than one fold's share of its class is cut into strips
along its longer axis, so that every class with at least two pieces can appear on both sides.

``by="rois"`` keeps every ROI (connected component) whole wherever its class has two or more: a
validation ROI then lies away from every training pixel of its class, as the test ROIs of the real
scenes do, while a strip of a training ROI is a near-copy of its neighbours. Its folds are less
even (a class of two ROIs is validated on one of them, or not at all, in a given fold); a class of
one ROI is still cut into strips, the only way it can be validated.

Folds are stratified by class: each class's pieces, in a seeded random order, go one by one to the
fold holding the fewest of that class's pixels so far. ``validation_fraction`` f gives
k = round(1/f) folds; the validation split is fold ``cv_fold`` (0 … k−1), so running the k values
of ``cv_fold`` is k-fold cross-validation by blob. A class cut into a single piece (one or a few
pixels) stays in training: it could never be both learned and validated.

Disjoint patches (``patches.disjoint``): a training patch must not see the values of a validation
or test pixel, a validation patch not those of a test pixel. ``masked_cube`` replaces the hidden
pixels (``patches.fill``) by the per-channel mean of the training pixels (after normalisation) or by
the nearest visible pixel; the classification map and the test patches read the whole scene, as at
deployment. The mean is one spectrum no real neighbourhood shows: where training and test pixels
interleave (the synthetic scene), every training window of a class shows it where test windows show
that class, and a model learns the fill.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fedrs.errors import InputError

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


PIECES = ("strips", "rois")


def blob_pieces(labels: np.ndarray, max_pixels: int, by: str = "strips") -> list[np.ndarray]:
    """The flat indices of each piece of one class's mask ``labels`` (bool [H, W]): its connected
    components, each cut into strips of at most ``max_pixels`` along its longer axis — or, ``by``
    "rois", whole wherever there are two or more of them."""
    if by not in PIECES:
        raise InputError(f"patches.validation_by is {by!r}; expected one of {list(PIECES)}")
    components, count = ndimage.label(labels, structure=EIGHT_NEIGHBOURS)
    pieces = []
    width = labels.shape[1]
    for component in range(1, count + 1):
        flat = np.flatnonzero(components.ravel() == component)
        if flat.size <= max_pixels or (by == "rois" and count >= 2):
            pieces.append(flat)
            continue
        rows, cols = flat // width, flat % width
        along = cols if np.ptp(cols) >= np.ptp(rows) else rows
        order = flat[np.lexsort((rows * width + cols, along))]
        parts = int(np.ceil(flat.size / max_pixels))
        pieces.extend(np.sort(chunk) for chunk in np.array_split(order, parts))
    return pieces


def blob_folds(train_labels: np.ndarray, folds: int, seed: int, by: str = "strips") -> np.ndarray:
    """The fold (0 … folds−1) of every training pixel, −1 off the training ROIs and −2 for the pixels
    of a class that stays in training (a single piece)."""
    if folds < 2:
        raise InputError(f"cross-validation needs at least 2 folds; got {folds}")
    rng = np.random.default_rng(seed)
    assignment = np.full(train_labels.size, -1, dtype=np.int64)
    for klass in np.unique(train_labels[train_labels > 0]):
        mask = train_labels == klass
        pieces = blob_pieces(mask, max(1, int(np.ceil(mask.sum() / folds))), by)
        if len(pieces) < 2:
            for piece in pieces:
                assignment[piece] = -2
            continue
        held = np.zeros(folds, dtype=np.int64)
        for index in rng.permutation(len(pieces)):
            lightest = np.flatnonzero(held == held.min())
            fold = int(lightest[rng.integers(lightest.size)])
            assignment[pieces[index]] = fold
            held[fold] += pieces[index].size
    return assignment.reshape(train_labels.shape)


def folds_for(validation_fraction: float) -> int:
    if not 0.0 < validation_fraction <= 0.5:
        raise InputError(f"patches.validation_fraction is {validation_fraction}; expected a value in (0, 0.5] "
                         "(every choice is made on validation pixels, so there must be some)")
    return max(2, int(round(1.0 / validation_fraction)))


def validation_split(train_labels: np.ndarray, validation_fraction: float, seed: int, cv_fold: int = 0,
                     by: str = "strips") -> tuple[np.ndarray, np.ndarray]:
    """(training labels, validation labels): fold ``cv_fold`` of the blob folds moved to validation.
    Both are label rasters like the input (0 = unlabelled)."""
    folds = folds_for(validation_fraction)
    if not 0 <= cv_fold < folds:
        raise InputError(f"cv_fold is {cv_fold}; with validation_fraction {validation_fraction} there are {folds} "
                         f"folds, so expected 0 … {folds - 1}")
    assignment = blob_folds(train_labels, folds, seed, by)
    validation = np.where(assignment == cv_fold, train_labels, 0).astype(train_labels.dtype)
    training = np.where(assignment == cv_fold, 0, train_labels).astype(train_labels.dtype)
    if not (validation > 0).any():
        raise InputError(f"the validation split is empty: no class of the {int((train_labels > 0).sum())} training "
                         "pixels has two blobs; label more ROIs or lower patches.validation_fraction")
    return training, validation


FILLS = ("mean", "nearest")


def masked_cube(cube: np.ndarray, visible_mean_of: np.ndarray, hidden: np.ndarray, fill: str) -> np.ndarray:
    """``cube`` [C, H, W] with the ``hidden`` pixels replaced: ``mean`` by the per-channel mean of
    the pixels in ``visible_mean_of`` (bool [H, W]; the training pixels), ``nearest`` by the nearest
    pixel that is not hidden (Euclidean distance; ties as ``scipy.ndimage.distance_transform_edt``
    breaks them) — a hidden blob then continues its visible surroundings instead of showing one
    spectrum no real neighbourhood has."""
    if fill not in FILLS:
        raise InputError(f"patches.fill is {fill!r}; expected one of {list(FILLS)}")
    if not hidden.any():
        return cube
    out = cube.copy()
    if fill == "mean":
        value = cube[:, visible_mean_of].mean(axis=1, dtype=np.float64).astype(cube.dtype)
        out[:, hidden] = value[:, None]
        return out
    if hidden.all():
        raise InputError("patches.fill: nearest with every pixel hidden; expected some visible pixel")
    _, (rows, cols) = ndimage.distance_transform_edt(hidden, return_indices=True)
    out[:, hidden] = cube[:, rows[hidden], cols[hidden]]
    return out


def neighbours_within(mask: np.ndarray, targets: np.ndarray, patch_size: int) -> int:
    """How many pixels of ``mask`` have a pixel of ``targets`` inside their P×P window (the overlap
    that disjoint patches remove; reported by the patches stage)."""
    near = ndimage.binary_dilation(targets, structure=np.ones((patch_size, patch_size), dtype=bool))
    return int((mask & near).sum())
