"""Patch nodes: training-pixel normalisation statistics and the train/test patch sets."""

from __future__ import annotations

import logging
from typing import Any

from fedrs.patching import PatchExtractor, apply_normaliser, fit_normaliser, labelled_pixels
from fedrs.scene.assemble import check_scene

logger = logging.getLogger(__name__)


def fit_normalisation(scene: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    train_mask = scene["train_labels"] > 0
    method = params.get("normalisation", "minmax")
    return {m: fit_normaliser(scene[m], train_mask, method) for m in ("hsi", "lidar")}


def build_patch_sets(scene: dict[str, Any], normalisation: dict[str, Any],
                     params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    check_scene(scene)
    size = int(params.get("patch_size", 7))
    extractors = {m: PatchExtractor(apply_normaliser(scene[m], normalisation[m]), size) for m in ("hsi", "lidar")}
    common = {
        "patch_size": size,
        "num_classes": len(scene["class_names"]),
        "class_names": list(scene["class_names"]),
        "grid_shape": list(scene["hsi"].shape[1:]),
        "scene": scene.get("name", "scene"),
    }
    sets = []
    for split in ("train", "test"):
        rows, cols, labels = labelled_pixels(scene[f"{split}_labels"])
        patch_set = {"rows": rows, "cols": cols, "labels": labels, "split": split, **common}
        for modality, extract in extractors.items():
            patch_set[modality] = extract(rows, cols)
        logger.info("%s patches: %d × (HSI %s, LiDAR %s)", split, labels.size,
                    patch_set["hsi"].shape[1:], patch_set["lidar"].shape[1:])
        sets.append(patch_set)
    return sets[0], sets[1]
