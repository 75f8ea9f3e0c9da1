"""ingest → patches → partition end to end through KedroSession on the default environment."""

import json
import sqlite3

import numpy as np
import pytest

from fedrs.datasets import NpzDataset, Raster, RasterDataset
from fedrs.scene.synthetic import generate_synthetic_scene

pytestmark = pytest.mark.integration


def test_data_pipelines_end_to_end(kedro_project):
    kedro_project.run(["data"])
    p = kedro_project.path
    for tif in ("hsi", "lidar", "train_labels", "test_labels"):
        assert p("data/01_raw/synthetic", f"{tif}.tif").is_file()
    scene = NpzDataset(str(p("data/02_intermediate/synthetic/scene.npz"))).load()
    assert scene["hsi"].shape == (16, 64, 64) and scene["crs"]
    summary = json.loads(p("data/02_intermediate/synthetic/scene_summary.json").read_text())
    assert summary["train_pixels"] == 60 and len(summary["classes"]) == 10

    train = NpzDataset(str(p("data/04_feature/synthetic/train_patches.npz"))).load()
    test = NpzDataset(str(p("data/04_feature/synthetic/test_patches.npz"))).load()
    assert train["hsi"].shape == (60, 16, 7, 7) and train["lidar"].shape == (60, 2, 7, 7)
    assert test["labels"].size == summary["test_pixels"]
    # normalisation comes from training pixels: their centre values span exactly [-1, 1]
    centre = train["hsi"][:, :, 3, 3]
    np.testing.assert_allclose(centre.min(axis=0), -1.0, atol=1e-5)
    np.testing.assert_allclose(centre.max(axis=0), 1.0, atol=1e-5)

    for layout, n_clients in (("modality_split", 4), ("horizontal", 8)):
        manifest = json.loads(p(f"data/05_model_input/synthetic/{layout}/manifest.json").read_text())
        assert manifest["layout"] == layout and manifest["num_clients"] == n_clients
        total = 0
        for entry in manifest["clients"]:
            # a client loads its own file with nothing but the path
            bundle = NpzDataset(
                str(p(f"data/05_model_input/synthetic/{layout}/clients/{entry['partition']}.npz"))
            ).load()
            assert sorted(m for m in ("hsi", "lidar") if m in bundle) == sorted(entry["modalities"])
            assert bundle["labels"].size == entry["num_samples"]
            total += entry["num_samples"]
        assert total == (120 if layout == "modality_split" else 60)  # both holders of a site count
        assert p(f"data/08_reporting/synthetic/{layout}_clients.png").stat().st_size > 10_000
    assert p("data/08_reporting/synthetic/scene_overview.png").is_file()
    # kedro-mlflow recorded the run in the project's SQLite store
    with sqlite3.connect(p("mlflow.db")) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] >= 1


def _artefacts(project):
    out = {}
    for rel in (
        "data/04_feature/synthetic/train_patches.npz",
        "data/04_feature/synthetic/test_patches.npz",
        "data/05_model_input/synthetic/horizontal/clients/client_003.npz",
    ):
        bundle = NpzDataset(str(project.path(rel))).load()
        out.update({f"{rel}:{k}": v for k, v in bundle.items() if isinstance(v, np.ndarray)})
    return out


def test_same_seed_same_arrays(kedro_project, tmp_path_factory, monkeypatch):
    import shutil

    from tests.conftest import KedroProject

    kedro_project.run(["data"])
    first = _artefacts(kedro_project)
    other_root = tmp_path_factory.mktemp("second") / "project"
    shutil.copytree(kedro_project.root, other_root, ignore=shutil.ignore_patterns("data", "mlflow.db"))
    monkeypatch.chdir(other_root)
    second_project = KedroProject(other_root)
    second_project.run(["data"])
    second = _artefacts(second_project)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_bad_input_writes_nothing(kedro_project):
    bad = kedro_project.path("data/01_raw/bad")
    scene = generate_synthetic_scene(
        {"seed": 1, "size": 48, "bands": 8, "n_buildings": 12, "n_tree_clusters": 6, "n_plazas": 3}
    )
    for layer, raster in scene.items():
        RasterDataset(str(bad / f"{layer}.tif")).save(raster)
    labels = scene["test_labels"].data.copy()
    labels[0, 5, 5] = 42
    RasterDataset(str(bad / "test_labels.tif")).save(
        Raster(labels, scene["test_labels"].crs, scene["test_labels"].transform)
    )
    kedro_project.write_conf(
        "badenv",
        "catalog.yml",
        {
            name: {"type": "fedrs.datasets.RasterDataset", "filepath": f"data/01_raw/bad/{layer}.tif"}
            for name, layer in (
                ("raw_hsi", "hsi"),
                ("raw_lidar", "lidar"),
                ("raw_train_labels", "train_labels"),
                ("raw_test_labels", "test_labels"),
            )
        },
    )
    kedro_project.write_conf("badenv", "globals.yml", {"scene_name": "bad"})
    with pytest.raises(Exception, match=r"test_labels.tif: label values \[42\] are outside 0..10"):
        kedro_project.run(["data"], env="badenv")
    assert not kedro_project.path("data/02_intermediate/bad").exists()
    assert not kedro_project.path("data/04_feature/bad").exists()


def test_missing_raw_file_names_the_path(kedro_project):
    kedro_project.write_conf("trento", "globals.yml", {"scene_name": "trento"})
    with pytest.raises(Exception, match=r"data/01_raw/trento/HSI.mat is missing; expected Trento HSI.mat"):
        kedro_project.run(["ingest"], env="trento")
