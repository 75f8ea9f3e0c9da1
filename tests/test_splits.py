"""Validation folds by blob and the masked cubes of disjoint patches."""

import numpy as np
import pytest
from scipy import ndimage

from fedrs.errors import InputError
from fedrs.splits import (
    blob_folds,
    blob_pieces,
    folds_for,
    masked_cube,
    neighbours_within,
    validation_split,
)


def _rois(rng: np.random.Generator, size: int = 60, classes: int = 4, blobs: int = 6) -> np.ndarray:
    """Rectangular ROIs of random classes, sizes and places (some touching), like a labelled scene."""
    labels = np.zeros((size, size), dtype=np.int16)
    for klass in range(1, classes + 1):
        for _ in range(blobs):
            r, c = rng.integers(0, size - 6, 2)
            h, w = rng.integers(1, 6, 2)
            labels[r:r + h, c:c + w] = klass
    return labels


def test_pieces_are_connected_same_class_regions_cut_to_the_share_of_a_fold():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:3, 1:3] = True            # 4 pixels
    mask[5, 5] = mask[6, 6] = True   # diagonal neighbours: one blob under 8-connectivity
    mask[8:10, 0:12] = True          # 24 pixels, longer along the columns
    pieces = blob_pieces(mask, max_pixels=10)
    sizes = sorted(p.size for p in pieces)
    assert sizes == [2, 4, 8, 8, 8]
    for piece in pieces:             # every piece is itself connected
        piece_mask = np.zeros(mask.size, dtype=bool)
        piece_mask[piece] = True
        assert ndimage.label(piece_mask.reshape(mask.shape), structure=np.ones((3, 3)))[1] == 1
    assert np.array_equal(np.sort(np.concatenate(pieces)), np.flatnonzero(mask))


def test_by_roi_a_class_of_several_rois_keeps_each_whole_and_a_class_of_one_is_cut():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:3, 1:3] = True            # 4 pixels
    mask[8:10, 0:12] = True          # 24 pixels: cut into strips by default, whole by ROI
    assert sorted(p.size for p in blob_pieces(mask, max_pixels=10)) == [4, 8, 8, 8]
    assert sorted(p.size for p in blob_pieces(mask, max_pixels=10, by="rois")) == [4, 24]
    single = np.zeros((12, 12), dtype=bool)
    single[8:10, 0:12] = True        # one ROI: strips, or the class could never be validated
    assert sorted(p.size for p in blob_pieces(single, max_pixels=10, by="rois")) == [8, 8, 8]
    with pytest.raises(InputError, match="validation_by is 'pixels'"):
        blob_pieces(mask, 10, by="pixels")


def test_by_roi_no_validation_pixel_shares_an_roi_with_a_training_pixel(rng):
    labels = _rois(rng)
    for seed in range(3):
        train, validation = validation_split(labels, 0.2, seed=seed, by="rois")
        assert np.array_equal(np.maximum(train, validation), labels) and (validation > 0).any()
        for klass in range(1, int(labels.max()) + 1):
            components, n = ndimage.label(labels == klass, structure=np.ones((3, 3)))
            if n < 2:
                continue
            for component in range(1, n + 1):  # each ROI of such a class lies wholly on one side
                sides = {bool(v) for v in validation[components == component] > 0}
                assert len(sides) == 1, (seed, klass, component)
    # strips (the default) do cut ROIs of such classes: what rois avoids
    train, validation = validation_split(labels, 0.2, seed=0)
    cut = 0
    for klass in range(1, int(labels.max()) + 1):
        components, n = ndimage.label(labels == klass, structure=np.ones((3, 3)))
        cut += sum(len({bool(v) for v in validation[components == c] > 0}) == 2 for c in range(1, n + 1))
    assert cut > 0


def test_folds_are_whole_pieces_stratified_by_class_and_seeded(rng):
    labels = _rois(rng)
    folds = blob_folds(labels, 5, seed=3)
    assert np.array_equal(folds, blob_folds(labels, 5, seed=3))
    assert not np.array_equal(folds, blob_folds(labels, 5, seed=4))
    assert (folds[labels == 0] == -1).all() and (folds[labels > 0] >= 0).all()
    for klass in range(1, 5):
        mask = labels == klass
        counts = np.bincount(folds[mask], minlength=5)
        # the greedy fill keeps each fold within one piece of the class's fair share
        assert counts.max() - counts.min() <= int(np.ceil(mask.sum() / 5)), (klass, counts)
        # no blob of a class straddles two folds unless it was cut for being larger than a share
        components, n = ndimage.label(mask, structure=np.ones((3, 3)))
        for component in range(1, n + 1):
            in_blob = components == component
            if in_blob.sum() <= np.ceil(mask.sum() / 5):
                assert np.unique(folds[in_blob]).size == 1


def test_the_validation_split_is_one_fold_and_the_folds_cover_every_training_pixel_once(rng):
    labels = _rois(rng)
    seen = np.zeros(labels.shape, dtype=int)
    for fold in range(folds_for(0.2)):
        train, validation = validation_split(labels, 0.2, seed=1, cv_fold=fold)
        assert not ((train > 0) & (validation > 0)).any()
        assert np.array_equal(np.maximum(train, validation), labels)
        assert 0.1 < (validation > 0).sum() / (labels > 0).sum() < 0.3
        seen += validation > 0
    assert (seen[labels > 0] == 1).all()  # k-fold: each pixel validated exactly once


def test_a_class_of_one_piece_stays_in_training_and_bad_settings_are_refused():
    labels = np.zeros((20, 20), dtype=np.int16)
    labels[2:6, 2:6] = 1
    labels[12:16, 12:16] = 1
    labels[10, 0] = 2  # a single pixel: it could never be both learned and validated
    train, validation = validation_split(labels, 0.5, seed=0)
    assert train[10, 0] == 2 and validation[10, 0] == 0
    with pytest.raises(InputError, match="validation_fraction is 0.0"):
        validation_split(labels, 0.0, seed=0)
    with pytest.raises(InputError, match="cv_fold is 2.*expected 0 … 1"):
        validation_split(labels, 0.5, seed=0, cv_fold=2)
    lonely = np.zeros((5, 5), dtype=np.int16)
    lonely[2, 2] = 1
    with pytest.raises(InputError, match="validation split is empty"):
        validation_split(lonely, 0.5, seed=0)


def test_hidden_pixels_show_the_training_mean_and_nothing_else_moves():
    g = np.random.default_rng(0)
    cube = g.standard_normal((3, 10, 10)).astype(np.float32)
    train = np.zeros((10, 10), dtype=bool)
    train[:, :4] = True
    hidden = np.zeros((10, 10), dtype=bool)
    hidden[5, 5] = hidden[0, 9] = True
    out = masked_cube(cube, train, hidden, "mean")
    assert np.allclose(out[:, 5, 5], cube[:, train].mean(axis=1)) and np.array_equal(out[:, 5, 5], out[:, 0, 9])
    assert np.array_equal(out[:, ~hidden], cube[:, ~hidden]) and out is not cube
    assert masked_cube(cube, train, np.zeros_like(hidden), "mean") is cube
    # (5, 5) is two columns from the training block: a 5×5 window reaches column 3 (rows 3–7), a 7×7
    # columns 2–3 (rows 2–8); (0, 9) is six columns away
    assert [neighbours_within(train, hidden, p) for p in (3, 5, 7)] == [0, 5, 14]


def test_nearest_fill_continues_the_visible_surroundings():
    cube = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6)
    train = np.ones((6, 6), dtype=bool)
    hidden = np.zeros((6, 6), dtype=bool)
    hidden[2:4, :] = True  # a band two rows high: each hidden pixel's one nearest is above or below it
    out = masked_cube(cube, train, hidden, "nearest")
    assert np.array_equal(out[:, ~hidden], cube[:, ~hidden])
    assert np.array_equal(out[:, 2], cube[:, 1]) and np.array_equal(out[:, 3], cube[:, 4])
    # no hidden value survives anywhere, and no value comes from another hidden pixel
    hidden_values = set(cube[0, hidden].tolist())
    assert not hidden_values & set(out[0].ravel().tolist())
    with pytest.raises(InputError, match="patches.fill is 'median'"):
        masked_cube(cube, train, hidden, "median")
    with pytest.raises(InputError, match="every pixel hidden"):
        masked_cube(cube, train, np.ones_like(hidden), "nearest")
