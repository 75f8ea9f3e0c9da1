import h5py
import numpy as np
import pytest
import scipy.io

from fedrs.datasets import MatArrayDataset, read_mat_variable
from fedrs.datasets.matlab import parse_key
from fedrs.errors import InputError


def write_v73(path, tree):
    """Write MATLAB-v7.3-style HDF5: arrays transposed, cells as object references."""
    with h5py.File(path, "w") as f:
        def put(group, name, value):
            if isinstance(value, dict):
                sub = group.create_group(name)
                for k, v in value.items():
                    put(sub, k, v)
            elif isinstance(value, list):  # a 1×N cell
                refs = group.create_dataset(name, (len(value), 1), dtype=h5py.ref_dtype)
                for i, item in enumerate(value):
                    target = f.require_group("#refs#").create_group(f"{name}_{i}")
                    for k, v in item.items():
                        put(target, k, v)
                    refs[i, 0] = target.ref
            else:
                group.create_dataset(name, data=np.asarray(value).T)
        for key, value in tree.items():
            put(f, key, value)


def test_parse_key():
    assert parse_key("hsi.Lidar{1}.z") == ["hsi", "Lidar", 0, "z"]
    assert parse_key("HSI") == ["HSI"]
    with pytest.raises(InputError, match="cannot parse"):
        parse_key("hsi..x")


def test_v5_cube_is_band_first(tmp_path, rng):
    cube = rng.random((5, 7, 3)).astype(np.float32)
    scipy.io.savemat(tmp_path / "a.mat", {"HSI": cube, "LiDAR": cube[..., 0]})
    raster = MatArrayDataset(str(tmp_path / "a.mat"), key="HSI").load()
    np.testing.assert_array_equal(raster.data, cube.transpose(2, 0, 1))
    lidar = MatArrayDataset(str(tmp_path / "a.mat"), key="LiDAR").load()
    assert lidar.data.shape == (1, 5, 7)


def test_v73_matches_v5(tmp_path, rng):
    cube = rng.random((5, 7, 3)).astype(np.float32)
    scipy.io.savemat(tmp_path / "v5.mat", {"HSI": cube})
    write_v73(tmp_path / "v73.mat", {"HSI": cube})
    assert h5py.is_hdf5(tmp_path / "v73.mat")
    np.testing.assert_array_equal(read_mat_variable(tmp_path / "v73.mat", "HSI"),
                                  read_mat_variable(tmp_path / "v5.mat", "HSI"))


@pytest.mark.parametrize("version", ["v5", "v73"])
def test_gatorsense_struct_paths(tmp_path, rng, version):
    data = rng.random((6, 4, 3)).astype(np.float32)
    z = rng.random((6, 4, 2)).astype(np.float32)
    labels = rng.integers(-1, 4, (6, 4)).astype(np.int16)
    path = tmp_path / "muufl.mat"
    if version == "v5":
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = {"z": z}
        scipy.io.savemat(path, {"hsi": {"Data": data, "Lidar": cell, "sceneLabels": {"labels": labels}}})
    else:
        write_v73(path, {"hsi": {"Data": data, "Lidar": [{"z": z}], "sceneLabels": {"labels": labels}}})
    np.testing.assert_array_equal(read_mat_variable(path, "hsi.Data"), data)
    np.testing.assert_array_equal(read_mat_variable(path, "hsi.Lidar{1}.z"), z)
    np.testing.assert_array_equal(read_mat_variable(path, "hsi.sceneLabels.labels"), labels)


def test_missing_file_names_path_and_layout(tmp_path):
    ds = MatArrayDataset(str(tmp_path / "HSI.mat"), key="HSI", description="HSI.mat with 'HSI' 166×600×63")
    with pytest.raises(Exception, match=r"HSI.mat is missing; expected HSI.mat with 'HSI' 166×600×63"):
        ds.load()


def test_missing_variable_lists_what_is_there(tmp_path):
    scipy.io.savemat(tmp_path / "a.mat", {"data": np.zeros((2, 2))})
    with pytest.raises(InputError, match=r"no 'HSI'.*found data"):
        read_mat_variable(tmp_path / "a.mat", "HSI")


def test_corrupt_file(tmp_path):
    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    with pytest.raises(InputError, match=r"Cannot read MATLAB file .*bad.mat"):
        read_mat_variable(tmp_path / "bad.mat", "HSI")


def test_non_numeric_variable(tmp_path):
    scipy.io.savemat(tmp_path / "a.mat", {"name": "trento"})
    with pytest.raises(Exception, match="expected a numeric array"):
        MatArrayDataset(str(tmp_path / "a.mat"), key="name").load()


def test_read_only(tmp_path):
    with pytest.raises(Exception, match="read only"):
        MatArrayDataset(str(tmp_path / "a.mat"), key="x").save(1)
