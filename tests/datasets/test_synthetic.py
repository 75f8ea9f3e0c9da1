"""The synthetic scene as catalog entries: generated once into its folder, regenerated when its
configuration changes, never saved over."""

import numpy as np
import pytest
from kedro.io import DatasetError

from fedrs.datasets.synthetic import SyntheticRasterDataset
from tests.conftest import TINY_SCENE


def test_the_scene_is_generated_once_and_again_when_its_settings_change(tmp_path):
    hsi = SyntheticRasterDataset(str(tmp_path / "hsi.tif"), "hsi", dict(TINY_SCENE))
    first = hsi.load()
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tif")}
    assert set(files) == {"hsi.tif", "lidar.tif", "train_labels.tif", "test_labels.tif"}
    labels = SyntheticRasterDataset(str(tmp_path / "train_labels.tif"), "train_labels", dict(TINY_SCENE)).load()
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tif")} == files  # read, not regenerated
    assert labels.data.max() > 0 and first.data.shape[0] == TINY_SCENE["bands"]
    other = SyntheticRasterDataset(str(tmp_path / "hsi.tif"), "hsi", {**TINY_SCENE, "seed": 8}).load()
    assert not np.array_equal(other.data, first.data)
    with pytest.raises(DatasetError, match="not saved"):
        hsi.save(first)
    with pytest.raises(ValueError, match="layer 'rgb'"):
        SyntheticRasterDataset(str(tmp_path / "x.tif"), "rgb")
