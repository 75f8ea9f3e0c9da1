"""The real Trento and MUUFL LiDAR/labels of ../shared/datasets through the project's environments.

The HSI cubes are not distributed there: each test writes one of the right variable name, shape and
dtype next to symlinks of the real files, then runs the ``ingest`` pipeline of that environment.
"""


import h5py
import numpy as np
import pytest
import scipy.io

from fedrs.datasets import MatArrayDataset, NpzDataset
from tests.conftest import SHARED_DATASETS, requires_shared

pytestmark = pytest.mark.realdata

TRENTO_TRAIN = [129, 125, 105, 154, 184, 122]
TRENTO_TEST = [3905, 2778, 374, 8969, 10317, 3052]


def link(project, dataset, names):
    folder = project.path("data/01_raw", dataset)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(SHARED_DATASETS / dataset / name)
    return folder


def scene_of(project, name):
    return NpzDataset(str(project.path(f"data/02_intermediate/{name}/scene.npz"))).load()


def counts(labels, k):
    return np.bincount(labels.ravel(), minlength=k + 1)[1:].tolist()


@requires_shared("trento")
def test_trento_hong_distribution(kedro_project, rng):
    folder = link(kedro_project, "trento", ["LiDAR.mat", "TRLabel.mat", "TSLabel.mat"])
    scipy.io.savemat(folder / "HSI.mat", {"HSI": rng.random((166, 600, 63), dtype=np.float32)})
    kedro_project.run(["ingest"], env="trento")
    scene = scene_of(kedro_project, "trento")
    assert scene["hsi"].shape == (63, 166, 600) and scene["lidar"].shape == (1, 166, 600)
    assert counts(scene["train_labels"], 6) == TRENTO_TRAIN
    assert counts(scene["test_labels"], 6) == TRENTO_TEST
    assert scene["class_names"][0] == "Apple trees" and len(scene["wavelengths"]) == 63
    assert float(scene["lidar"].max()) == pytest.approx(20.152283, rel=1e-6)


@requires_shared("trento")
def test_trento_italy_distribution_draws_a_seeded_split(kedro_project, rng):
    folder = link(kedro_project, "trento", ["Italy_lidar.mat", "allgrd.mat"])
    scipy.io.savemat(folder / "Italy_hsi.mat", {"data": rng.random((166, 600, 63), dtype=np.float32)})
    kedro_project.run(["ingest"], env="trento_italy")
    scene = scene_of(kedro_project, "trento")
    assert scene["lidar"].shape == (2, 166, 600)
    train, test = counts(scene["train_labels"], 6), counts(scene["test_labels"], 6)
    assert [a + b for a, b in zip(train, test, strict=False)] == [
        a + b for a, b in zip(TRENTO_TRAIN, TRENTO_TEST, strict=False)
    ]
    assert 780 <= sum(train) <= 860  # 2.7 % of 30,214 per class


@requires_shared("muufl")
def test_muufl_repackaging(kedro_project, rng):
    folder = link(kedro_project, "muufl", ["LiDAR.mat", "gt.mat"])
    scipy.io.savemat(folder / "HSI.mat", {"HSI": rng.random((325, 220, 64), dtype=np.float32)})
    kedro_project.run(["ingest"], env="muufl")
    scene = scene_of(kedro_project, "muufl")
    assert scene["hsi"].shape == (64, 325, 220) and scene["lidar"].shape == (2, 325, 220)
    assert counts(scene["train_labels"], 11) == [20] * 11
    assert int((scene["train_labels"] > 0).sum() + (scene["test_labels"] > 0).sum()) == 53687


@requires_shared("muufl")
def test_muufl_gatorsense_struct_file(kedro_project, rng):
    lidar = MatArrayDataset(str(SHARED_DATASETS / "muufl/LiDAR.mat"), key="LiDAR").load().data
    gt = MatArrayDataset(str(SHARED_DATASETS / "muufl/gt.mat"), key="gt").load().data[0].astype(np.int16)
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = {"z": lidar.transpose(1, 2, 0)}
    folder = kedro_project.path("data/01_raw/muufl")
    folder.mkdir(parents=True)
    scipy.io.savemat(
        folder / "muufl_gulfport_campus_1_hsi_220_label.mat",
        {
            "hsi": {
                "Data": rng.random((325, 220, 64), dtype=np.float32),
                "Lidar": cell,
                "sceneLabels": {"labels": np.where(gt > 0, gt, np.int16(-1))},
                "info": {"wavelength": np.linspace(375, 1050, 64)},
            }
        },
    )
    kedro_project.run(["ingest"], env="muufl_gatorsense")
    scene = scene_of(kedro_project, "muufl")
    np.testing.assert_array_equal(scene["lidar"], lidar)
    assert counts(scene["train_labels"], 11) == [20] * 11
    assert int((scene["train_labels"] > 0).sum() + (scene["test_labels"] > 0).sum()) == 53687


@requires_shared("trento")
def test_real_lidar_as_matlab_v73(tmp_path):
    """The same real raster read from a v7.3 (HDF5) file equals the v5 original."""
    v5 = MatArrayDataset(str(SHARED_DATASETS / "trento/Italy_lidar.mat"), key="data").load().data
    with h5py.File(tmp_path / "Italy_lidar.mat", "w") as f:
        f.create_dataset("data", data=v5.transpose(1, 2, 0).T)  # MATLAB's column-major layout
    v73 = MatArrayDataset(str(tmp_path / "Italy_lidar.mat"), key="data").load().data
    np.testing.assert_array_equal(v73, v5)
