"""ingest → patches → partition end to end through KedroSession on the default environment."""

import json
import sqlite3

import mlflow
import numpy as np
import pytest

from fedrs.datasets import NpzDataset, Raster, RasterDataset
from fedrs.scene.synthetic import generate_synthetic_scene
from fedrs.splits import validation_split

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
    validation = NpzDataset(str(p("data/04_feature/synthetic/validation_patches.npz"))).load()
    test = NpzDataset(str(p("data/04_feature/synthetic/test_patches.npz"))).load()
    # a fifth of the training ROIs, by blob, is the validation split; the test pixels are untouched
    assert train["labels"].size + validation["labels"].size == 60 and 6 <= validation["labels"].size <= 18
    assert train["hsi"].shape[1:] == (16, 7, 7) and train["lidar"].shape[1:] == (2, 7, 7)
    assert test["labels"].size == summary["test_pixels"]
    split = NpzDataset(str(p("data/04_feature/synthetic/pixel_split.npz"))).load()
    assert_disjoint(train, split, hidden=("validation", "test"), own=(validation, test))
    assert_disjoint(validation, split, hidden=("test",), own=(test,))
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
        assert total == 2 * train["labels"].size if layout == "modality_split" else train["labels"].size
        assert p(f"data/08_reporting/synthetic/{layout}_clients.png").stat().st_size > 10_000
    assert p("data/08_reporting/synthetic/scene_overview.png").is_file()
    # kedro-mlflow recorded the run in the project's SQLite store
    with sqlite3.connect(p("mlflow.db")) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] >= 1


def assert_disjoint(patches, split, hidden, own):
    """No window position of ``patches`` that falls on a pixel of a ``hidden`` split shows that
    split's own values (``own``: the hidden pixels' spectra, as the centres of their own patches),
    and the positions show more than one value (the default fill is the nearest visible pixel)."""
    half = patches["patch_size"] // 2
    masked = np.zeros(split["test_labels"].shape, dtype=bool)
    for name in hidden:
        masked |= split[f"{name}_labels"] > 0
    seen = []
    for i, (r, c) in enumerate(zip(patches["rows"], patches["cols"], strict=True)):
        for dr in range(-half, half + 1):
            for dc in range(-half, half + 1):
                rr, cc = r + dr, c + dc
                if 0 <= rr < masked.shape[0] and 0 <= cc < masked.shape[1] and masked[rr, cc]:
                    seen.append(tuple(patches["hsi"][i, :, half + dr, half + dc]))
    assert seen, "the tiny scene should put hidden pixels inside some windows"
    own_values = {tuple(v) for p in own for v in p["hsi"][:, :, half, half]}
    assert not set(seen) & own_values and len(set(seen)) > 1


def test_nearest_fill_shows_visible_pixels_in_place_of_hidden_ones():
    """With ``fill: nearest`` no training window shows a validation or test pixel's own spectrum,
    and every hidden position shows the spectrum of a visible pixel of the scene."""
    from fedrs.patching import apply_normaliser
    from fedrs.pipelines.patches.nodes import build_patch_sets, fit_normalisation, split_training_pixels
    from fedrs.scene.assemble import assemble_scene
    from tests.conftest import TINY_SCENE

    raw = generate_synthetic_scene(TINY_SCENE)
    scene = assemble_scene(raw["hsi"], raw["lidar"], raw["train_labels"], raw["test_labels"], {})
    split, _ = split_training_pixels(scene, {"validation_fraction": 0.25}, {"seed": 3})
    params = {"patch_size": 5, "disjoint": True, "fill": "nearest"}
    train, validation, test = build_patch_sets(scene, split, fit_normalisation(scene, split, {}), params)
    hidden = (split["validation_labels"] > 0) | (split["test_labels"] > 0)
    normalisation = fit_normalisation(scene, split, {})
    _, _, whole = build_patch_sets(scene, split, normalisation, {**params, "disjoint": False})
    cube = apply_normaliser(scene["hsi"], normalisation["hsi"])
    visible = {tuple(v) for v in cube[:, ~hidden].T}
    own = {tuple(v) for v in test["hsi"][:, :, 2, 2]} | {tuple(v) for v in validation["hsi"][:, :, 2, 2]}
    shown = []
    for i, (r, c) in enumerate(zip(train["rows"], train["cols"], strict=True)):
        for dr in range(-2, 3):
            for dc in range(-2, 3):
                rr, cc = r + dr, c + dc
                if 0 <= rr < hidden.shape[0] and 0 <= cc < hidden.shape[1] and hidden[rr, cc]:
                    shown.append(tuple(train["hsi"][i, :, 2 + dr, 2 + dc]))
    assert shown and not set(shown) & own and set(shown) <= visible
    assert len(set(shown)) > 1  # not one fill value: the surroundings differ from place to place
    assert np.array_equal(test["hsi"], whole["hsi"])  # test windows see the whole scene


def _artefacts(project):
    out = {}
    for rel in (
        "data/04_feature/synthetic/train_patches.npz",
        "data/04_feature/synthetic/validation_patches.npz",
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


def test_cv_fold_validates_on_another_blob_fold_of_the_same_training_rois(kedro_project):
    split_path = "data/04_feature/synthetic/pixel_split.npz"
    kedro_project.run(["ingest", "patches"])
    first = NpzDataset(str(kedro_project.path(split_path))).load()
    while mlflow.active_run() is not None:  # the next session opens its own MLflow run
        mlflow.end_run()
    kedro_project.run(["patches"], params={"cv_fold": 1})  # the README's `kedro run --params cv_fold=1`
    second = NpzDataset(str(kedro_project.path(split_path))).load()
    assert int(first["cv_fold"]) == 0 and int(second["cv_fold"]) == 1
    assert not ((first["validation_labels"] > 0) & (second["validation_labels"] > 0)).any()
    both = [np.maximum(s["train_labels"], s["validation_labels"]) for s in (first, second)]
    np.testing.assert_array_equal(both[0], both[1])  # the same training ROIs, another fold held out
    while mlflow.active_run() is not None:
        mlflow.end_run()
    # patches.validation_by reaches the splitter: the tiny scene's training pixels are scattered single
    # pixels, so strips and whole ROIs cut them alike (tests/test_splits.py tells them apart); an unknown
    # value must be refused by name before the patch sets are rewritten
    written = kedro_project.path("data/04_feature/synthetic/train_patches.npz").stat().st_mtime_ns
    kedro_project.write_conf("local", "parameters_patches.yml", {"patches": {"validation_by": "pixels"}})
    with pytest.raises(Exception, match=r"patches.validation_by is 'pixels'; expected one of \['strips', 'rois'\]"):
        kedro_project.run(["patches"])
    assert kedro_project.path("data/04_feature/synthetic/train_patches.npz").stat().st_mtime_ns == written
    kedro_project.write_conf("local", "parameters_patches.yml", {"patches": {"validation_by": "rois"}})
    kedro_project.run(["patches"])
    third = NpzDataset(str(kedro_project.path(split_path))).load()
    expected = validation_split(both[0], 0.2, int(third["seed"]), 0, by="rois")
    np.testing.assert_array_equal(third["validation_labels"], expected[1])


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
