"""Scoring a trained artefact: the test report with its single-modality variants, and the full-scene
map predicted in batches — the same classes pixel by pixel as scoring those pixels' patches."""

import numpy as np
import torch

from fedrs.evaluation import evaluate_artifact, load_model, predict_scene
from fedrs.federated.algorithms import get_algorithm
from fedrs.patching import apply_normaliser, extract_patches, fit_normaliser
from fedrs.results import artifact


def _scene(rng):
    hsi = rng.standard_normal((5, 9, 11)).astype(np.float32)
    lidar = rng.standard_normal((1, 9, 11)).astype(np.float32)
    labels = np.zeros((9, 11), np.int16)
    labels[::2, ::3] = rng.integers(1, 4, labels[::2, ::3].shape)
    return {"hsi": hsi, "lidar": lidar, "train_labels": labels}


def _artifact():
    torch.manual_seed(0)
    spec = {"bands": 5, "lidar_channels": 1, "num_classes": 3, "width": 4, "dim": 8}
    model = get_algorithm("fedavg").build_model(spec)
    return artifact("fedavg", spec, ["hsi", "lidar"], model.state_dict())


def test_the_map_gives_each_pixel_the_class_its_patch_scores(rng):
    scene = _scene(rng)
    mask = scene["train_labels"] > 0
    normalisation = {m: fit_normaliser(scene[m], mask, "minmax") for m in ("hsi", "lidar")}
    config = {"device": "cpu", "precision": "fp32"}
    prediction = predict_scene(_artifact(), scene, normalisation, 7, 16, config)
    assert prediction.shape == (9, 11) and prediction.min() >= 1 and prediction.max() <= 3
    rows, cols = np.nonzero(mask)
    patches = {m: extract_patches(apply_normaliser(scene[m], normalisation[m]), rows, cols, 7)
               for m in ("hsi", "lidar")}
    algorithm, model = load_model(_artifact())
    np.testing.assert_array_equal(algorithm.predict(model, patches, config) + 1, prediction[rows, cols])


def test_the_report_has_the_scores_and_the_zero_filled_variants(rng):
    n = 30
    test = {"hsi": rng.standard_normal((n, 5, 7, 7)).astype(np.float32),
            "lidar": rng.standard_normal((n, 1, 7, 7)).astype(np.float32),
            "labels": rng.integers(0, 3, n), "num_classes": 3, "class_names": ["a", "b", "c"]}
    report = evaluate_artifact(_artifact(), test, {"device": "cpu", "precision": "fp32"})
    assert 0.0 <= report["oa"] <= 1.0 and report["algorithm"] == "fedavg" and report["modalities"] == ["hsi", "lidar"]
    assert set(report["variants"]) == {"hsi_zero_filled", "lidar_zero_filled"}
