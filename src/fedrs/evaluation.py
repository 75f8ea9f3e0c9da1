"""Scoring a trained model artefact: test metrics, single-modality ablations, full-scene maps."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fedrs.federated.algorithm_base import ClassifierAlgorithm
from fedrs.federated.algorithms import get_classifier
from fedrs.federated.local import CrossEntropyTally
from fedrs.metrics import expected_calibration_error
from fedrs.patching import apply_normaliser, iter_scene_patches


def load_model(artifact: dict[str, Any]) -> tuple[ClassifierAlgorithm, torch.nn.Module]:
    algorithm = get_classifier(artifact["algorithm"])
    model = algorithm.build_model(artifact["spec"])
    model.load_state_dict(artifact["state"])
    return algorithm, model.eval()


def evaluate_artifact(artifact: dict[str, Any], test: dict[str, Any], config: dict[str, Any],
                      variants: bool = True) -> dict[str, Any]:
    """OA/AA/κ/per-class on the test patches with the model's modalities, plus (``variants``) the
    algorithm's single-modality variants (zero-filled; for FedCMI also through the infiltration
    projectors)."""
    algorithm, model = load_model(artifact)
    modalities = tuple(artifact["modalities"])
    test = algorithm.prepare(artifact, test, config)
    temperature = artifact.get("temperature")
    # a scaled model's logits times T are the model's before scaling: one pass scores both
    before = () if temperature is None else (1.0 / float(temperature),)
    tally = CrossEntropyTally(np.asarray(test["labels"]), before, calibration_by_temperature=True)
    report = algorithm.score(model, test, config, modalities, tally=tally)
    if temperature is not None:
        report.update(temperature=float(temperature),
                      loss_before_temperature=float(tally.by_temperature[0] / tally.count),
                      ece_before_temperature=expected_calibration_error(tally.bins_by_temperature[0]))
    report["algorithm"] = artifact["algorithm"]
    report["modalities"] = list(modalities)
    if variants:
        report["variants"] = algorithm.evaluation_variants(model, test, config, modalities)
    return report


@torch.no_grad()
def predict_scene(artifact: dict[str, Any], scene: dict[str, Any], normalisation: dict[str, Any],
                  patch_size: int, batch_size: int, config: dict[str, Any]) -> np.ndarray:
    """Predicted class (1..K) of every pixel, by batched inference over the whole scene."""
    algorithm, model = load_model(artifact)
    modalities = tuple(artifact["modalities"])
    hsi = apply_normaliser(scene["hsi"], normalisation["hsi"])
    lidar = apply_normaliser(scene["lidar"], normalisation["lidar"])
    height, width = hsi.shape[1:]
    out = np.zeros((height, width), dtype=np.int16)
    batches = iter_scene_patches(hsi, lidar, patch_size, batch_size)
    total = -(-height * width // batch_size)
    for rows, cols, hsi_patches, lidar_patches in tqdm(batches, total=total, desc=f"{artifact['algorithm']} map",
                                                       unit="batch", leave=False):
        batch = algorithm.prepare(artifact, {"hsi": hsi_patches, "lidar": lidar_patches}, config)
        out[rows, cols] = algorithm.predict(model, batch, config, modalities) + 1
    return out
