import numpy as np
import pytest
import torch

from fedrs.errors import InputError
from fedrs.patching import (
    PatchExtractor,
    apply_normaliser,
    extract_patches,
    fit_normaliser,
    iter_pixel_batches,
    iter_scene_patches,
    labelled_pixels,
    resize_patches,
)


def naive_patch(cube, r, c, p):
    half = p // 2
    padded = np.pad(cube, ((0, 0), (half, half), (half, half)), mode="reflect")
    return padded[:, r:r + p, c:c + p]


@pytest.mark.parametrize("patch_size", [1, 3, 7])
def test_patches_match_a_naive_reflect_pad(rng, patch_size):
    cube = rng.random((3, 9, 11)).astype(np.float32)
    rows = np.array([0, 0, 8, 4, 8, 2])
    cols = np.array([0, 10, 0, 5, 10, 1])  # corners, borders and the middle
    patches = extract_patches(cube, rows, cols, patch_size)
    assert patches.shape == (6, 3, patch_size, patch_size) and patches.flags.c_contiguous
    for i, (r, c) in enumerate(zip(rows, cols, strict=False)):
        np.testing.assert_array_equal(patches[i], naive_patch(cube, r, c, patch_size))
        assert patches[i, :, patch_size // 2, patch_size // 2].tolist() == cube[:, r, c].tolist()


def test_reflect_excludes_the_edge_pixel():
    cube = np.arange(5, dtype=np.float32).reshape(1, 1, 5).repeat(5, axis=1)
    patch = extract_patches(cube, np.array([2]), np.array([0]), 3)
    assert patch[0, 0, 0].tolist() == [1.0, 0.0, 1.0]  # reflect, not symmetric (which gives 0, 0, 1)


def test_bad_patch_sizes(rng):
    cube = rng.random((1, 4, 4)).astype(np.float32)
    with pytest.raises(InputError, match="expected an odd number"):
        PatchExtractor(cube, 6)
    with pytest.raises(InputError, match="needs a scene larger than 4 px"):
        PatchExtractor(cube, 9)


def test_normaliser_uses_training_pixels_only(rng):
    cube = rng.random((2, 6, 6)) * 10
    cube[1] = 5.0  # a constant channel
    mask = np.zeros((6, 6), bool)
    mask[:2] = True
    cube_with_outlier = cube.copy()
    cube_with_outlier[0, 5, 5] = 1e6  # a test pixel: must not move the statistics
    stats = fit_normaliser(cube_with_outlier, mask, "minmax")
    assert stats == fit_normaliser(cube, mask, "minmax")
    out = apply_normaliser(cube, stats)
    assert out[0][mask].min() == pytest.approx(-1.0) and out[0][mask].max() == pytest.approx(1.0)
    assert np.all(out[1] == 0.0)  # constant channel: scale 1, no division by zero
    standard = apply_normaliser(cube, fit_normaliser(cube, mask, "standard"))
    assert standard[0][mask].mean() == pytest.approx(0.0, abs=1e-6)
    assert standard[0][mask].std() == pytest.approx(1.0, abs=1e-5)


def test_normaliser_errors(rng):
    cube = rng.random((2, 3, 3))
    with pytest.raises(InputError, match="expected one of"):
        fit_normaliser(cube, np.ones((3, 3), bool), "zscore")
    with pytest.raises(InputError, match="the mask is empty"):
        fit_normaliser(cube, np.zeros((3, 3), bool))
    with pytest.raises(InputError, match="for 2 channels but the cube has 3"):
        apply_normaliser(rng.random((3, 3, 3)), fit_normaliser(cube, np.ones((3, 3), bool)))


def test_labelled_pixels_are_row_major_and_zero_based():
    labels = np.array([[0, 2], [1, 0]])
    rows, cols, y = labelled_pixels(labels)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0] and y.tolist() == [1, 0]


def test_full_scene_iterator_covers_every_pixel_once(rng):
    hsi = rng.random((3, 7, 5)).astype(np.float32)
    lidar = rng.random((1, 7, 5)).astype(np.float32)
    seen = np.zeros((7, 5), int)
    for rows, cols, h, li in iter_scene_patches(hsi, lidar, patch_size=3, batch_size=8):
        assert h.shape[1:] == (3, 3, 3) and li.shape[1:] == (1, 3, 3) and len(rows) <= 8
        np.testing.assert_array_equal(h[:, :, 1, 1], hsi[:, rows, cols].T)
        seen[rows, cols] += 1
    assert (seen == 1).all()
    assert sum(len(r) for r, _ in iter_pixel_batches((349, 1905), 4096)) == 349 * 1905


def test_resize_to_unet_input(rng):
    patches = rng.random((4, 5, 7, 7)).astype(np.float32)
    out = resize_patches(patches, 8)
    assert isinstance(out, np.ndarray) and out.shape == (4, 5, 8, 8)
    constant = np.full((1, 2, 7, 7), 0.25, np.float32)
    np.testing.assert_allclose(resize_patches(constant, 8), 0.25, rtol=1e-6)
    tensor = resize_patches(torch.from_numpy(patches), 8)
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), out)
    assert resize_patches(out, 8) is out or np.shares_memory(resize_patches(out, 8), out)
