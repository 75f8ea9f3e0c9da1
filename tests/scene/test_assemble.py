"""Every bad-input rule of the scene contract, each checked by its message."""

import numpy as np
import pytest

from fedrs.datasets import Raster
from fedrs.errors import InputError
from fedrs.scene.assemble import assemble_scene, check_scene

H, W = 12, 10
TRANSFORM = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def layers(rng, classes=3):
    hsi = Raster(rng.random((4, H, W)).astype(np.float32), None, TRANSFORM, None, "hsi.tif")
    lidar = Raster(rng.random((1, H, W)).astype(np.float32), None, TRANSFORM, None, "lidar.tif")
    train = np.zeros((H, W), np.uint8)
    test = np.zeros((H, W), np.uint8)
    for k in range(1, classes + 1):
        train[k, 1:3] = k
        test[k + 5, 1:6] = k
    return hsi, lidar, Raster(train, source="train.tif"), Raster(test, source="test.tif")


PARAMS = {"name": "t", "class_names": ["a", "b", "c"]}


def test_valid_scene(rng):
    scene = assemble_scene(*layers(rng), PARAMS)
    check_scene(scene)
    assert scene["hsi"].shape == (4, H, W) and scene["lidar"].dtype == np.float32
    assert int((scene["train_labels"] > 0).sum()) == 6 and int((scene["test_labels"] > 0).sum()) == 15
    assert scene["transform"] == list(TRANSFORM)


def test_grids_of_different_shape(rng):
    hsi, lidar, train, test = layers(rng)
    lidar = Raster(np.zeros((1, H, W + 1), np.float32), source="lidar.tif")
    with pytest.raises(InputError, match=r"hsi.tif is 12×10 .* but lidar.tif is 12×11"):
        assemble_scene(hsi, lidar, train, test, PARAMS)


def test_grids_with_different_transform(rng):
    hsi, lidar, train, test = layers(rng)
    lidar.transform = (2.0, 0.0, 0.0, 0.0, -2.0, 0.0)
    with pytest.raises(InputError, match=r"hsi.tif has transform .* but lidar.tif has \(2.0"):
        assemble_scene(hsi, lidar, train, test, PARAMS)


def test_nan_refused_by_default(rng):
    hsi, lidar, train, test = layers(rng)
    hsi.data[2, 3, 4] = np.nan
    with pytest.raises(InputError, match=r"hsi.tif: 1 pixels hold NaN, inf or nodata .* row 3, col 4"):
        assemble_scene(hsi, lidar, train, test, PARAMS)


def test_nodata_masked_on_request(rng):
    hsi, lidar, train, test = layers(rng)
    lidar.nodata = -9999.0
    lidar.data[0, 1, 1] = -9999.0  # a training pixel (class 1)
    hsi.data[0, 7, 2] = np.inf     # a test pixel (class 2)
    scene = assemble_scene(hsi, lidar, train, test, {**PARAMS, "invalid_values": "mask"})
    assert scene["invalid_pixels"] == 2
    assert scene["train_labels"][1, 1] == 0 and scene["test_labels"][7, 2] == 0
    assert np.isfinite(scene["hsi"]).all() and (scene["lidar"] != -9999.0).all()


def test_unknown_invalid_policy(rng):
    with pytest.raises(InputError, match=r"scene.invalid_values is 'drop'; expected one of"):
        assemble_scene(*layers(rng), {**PARAMS, "invalid_values": "drop"})


def test_labels_outside_range(rng):
    hsi, lidar, train, test = layers(rng)
    test.data[0, 9, 9] = 7
    with pytest.raises(InputError, match=r"test.tif: label values \[7\] are outside 0..3"):
        assemble_scene(hsi, lidar, train, test, PARAMS)


def test_non_integer_labels(rng):
    hsi, lidar, train, test = layers(rng)
    train = Raster(train.data.astype(np.float32) + 0.5, source="train.tif")
    with pytest.raises(InputError, match="train.tif: labels hold non-integer values"):
        assemble_scene(hsi, lidar, train, test, PARAMS)


def test_class_without_training_pixel(rng):
    hsi, lidar, train, test = layers(rng)
    train.data[train.data == 2] = 0
    with pytest.raises(InputError, match=r"classes 2 \(b\) have no training pixel"):
        assemble_scene(hsi, lidar, train, test, PARAMS)


def test_overlapping_train_and_test(rng):
    hsi, lidar, train, test = layers(rng)
    test.data[0, 1, 1] = 1
    with pytest.raises(InputError, match=r"overlap on 1 pixels \(first at row 1, col 1\)"):
        assemble_scene(hsi, lidar, train, test, PARAMS)


def test_wavelength_count_must_match(rng):
    with pytest.raises(InputError, match="3 values but hsi.tif has 4 bands"):
        assemble_scene(*layers(rng), {**PARAMS, "wavelengths": [1, 2, 3]})
    scene = assemble_scene(*layers(rng), {**PARAMS, "wavelengths": [400, 1000]})
    assert scene["wavelengths"] == [400.0, 600.0, 800.0, 1000.0]


def test_random_split_is_seeded_and_disjoint(rng):
    hsi, lidar, train, test = layers(rng)
    all_labels = Raster(np.maximum(train.data, test.data), source="gt.mat")
    params = {**PARAMS, "split": {"method": "random_per_class", "n_per_class": 2, "seed": 3}}
    a = assemble_scene(hsi, lidar, all_labels, all_labels, params)
    b = assemble_scene(hsi, lidar, all_labels, all_labels, params)
    np.testing.assert_array_equal(a["train_labels"], b["train_labels"])
    assert np.bincount(a["train_labels"].ravel(), minlength=4)[1:].tolist() == [2, 2, 2]
    assert int((a["train_labels"] > 0).sum() + (a["test_labels"] > 0).sum()) == 21
    c = assemble_scene(hsi, lidar, all_labels, all_labels, {**params, "split": {**params["split"], "seed": 4}})
    assert not np.array_equal(a["train_labels"], c["train_labels"])


def test_random_split_refuses_conflicting_rasters(rng):
    hsi, lidar, train, test = layers(rng)
    other = Raster(train.data.copy(), source="other.mat")
    other.data[0, 1, 1] = 3
    params = {**PARAMS, "split": {"method": "random_per_class", "n_per_class": 1}}
    with pytest.raises(InputError, match="give different classes to 1 pixels"):
        assemble_scene(hsi, lidar, train, other, params)


def test_unlabelled_value_minus_one(rng):
    hsi, lidar, train, test = layers(rng)
    labels = np.maximum(train.data, test.data).astype(np.int16)
    gt = np.where(labels > 0, labels, np.int16(-1))
    raster = Raster(gt, source="muufl.mat")
    params = {**PARAMS, "unlabelled_value": -1, "split": {"method": "random_per_class", "n_per_class": 1}}
    scene = assemble_scene(hsi, lidar, raster, raster, params)
    assert scene["train_labels"].min() == 0 and int((scene["train_labels"] > 0).sum()) == 3
    with pytest.raises(InputError, match=r"label values \[-1\] are outside"):
        assemble_scene(hsi, lidar, raster, raster, {**params, "unlabelled_value": 0})


def test_class_names_from_raster_meta(rng):
    hsi, lidar, train, test = layers(rng)
    test.meta["class_names"] = ["x", "y", "z"]
    assert assemble_scene(hsi, lidar, train, test, {})["class_names"] == ["x", "y", "z"]
    assert assemble_scene(*layers(rng), {})["class_names"] == ["class_1", "class_2", "class_3"]
