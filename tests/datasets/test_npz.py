import numpy as np
import pytest

from fedrs.datasets import NpzDataset


def test_round_trip_arrays_and_metadata(tmp_path, rng):
    bundle = {"hsi": rng.random((3, 2, 5, 5)).astype(np.float32), "labels": np.arange(3),
              "class_names": ["a", "b"], "patch_size": 5, "site": None}
    ds = NpzDataset(str(tmp_path / "deep" / "b.npz"))
    ds.save(bundle)
    back = ds.load()
    assert set(back) == set(bundle)
    np.testing.assert_array_equal(back["hsi"], bundle["hsi"])
    assert back["class_names"] == ["a", "b"] and back["patch_size"] == 5 and back["site"] is None


def test_failed_save_keeps_previous_file(tmp_path):
    ds = NpzDataset(str(tmp_path / "b.npz"))
    ds.save({"x": np.ones(3)})
    with pytest.raises(Exception, match="not JSON serializable"):
        ds.save({"x": np.ones(3), "bad": object()})  # not JSON-serialisable: fails mid-write
    np.testing.assert_array_equal(ds.load()["x"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["b.npz"]
