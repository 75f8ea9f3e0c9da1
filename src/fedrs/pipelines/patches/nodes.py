"""Patch nodes: the validation split carved from the training ROIs by blob, training-pixel
normalisation statistics, and the train / validation / test patch sets (spatially disjoint when
``patches.disjoint``: what each split may see, ``fedrs.splits``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedrs.patching import PatchExtractor, apply_normaliser, fit_normaliser, labelled_pixels
from fedrs.plots import split_figure
from fedrs.scene.assemble import check_scene
from fedrs.splits import masked_cube, neighbours_within, validation_split

logger = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")


def split_training_pixels(scene: dict[str, Any], params: dict[str, Any], compute: dict[str, Any]
                          ) -> tuple[dict[str, Any], Figure]:
    """The scene's label rasters per split: fold ``cv_fold`` of the training ROIs' blob folds is the
    validation split (seeded by the run's seed); the test labels are the scene's, untouched."""
    check_scene(scene)
    fraction, fold = float(params.get("validation_fraction", 0.2)), int(params.get("cv_fold", 0))
    by = str(params.get("validation_by", "strips"))
    train, validation = validation_split(scene["train_labels"], fraction, int(compute["seed"]), fold, by)
    size = int(params.get("patch_size", 7))
    counts = {name: int((labels > 0).sum()) for name, labels in
              (("train", train), ("validation", validation), ("test", scene["test_labels"]))}
    logger.info("pixels: %d training, %d validation (fold %d, by blob: %s), %d test; %d training pixels have a "
                "validation or test pixel in their %d×%d window", counts["train"], counts["validation"], fold, by,
                counts["test"], neighbours_within(train > 0, (validation > 0) | (scene["test_labels"] > 0), size),
                size, size)
    split = {"train_labels": train, "validation_labels": validation, "test_labels": scene["test_labels"],
             "validation_fraction": fraction, "cv_fold": fold, "seed": int(compute["seed"])}
    return split, split_figure(split, list(scene["class_names"]), str(scene.get("name", "")))


def fit_normalisation(scene: dict[str, Any], split: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    train_mask = split["train_labels"] > 0
    method = params.get("normalisation", "minmax")
    return {m: fit_normaliser(scene[m], train_mask, method) for m in ("hsi", "lidar")}


def visible_cubes(scene: dict[str, Any], split: dict[str, Any], normalisation: dict[str, Any], disjoint: bool,
                  fill: str = "nearest") -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """The normalised cubes each split's patches are cut from: with ``disjoint``, training patches
    see neither validation nor test pixels, validation patches no test pixel (both shown ``fill``:
    the training mean or the nearest visible pixel); test patches see the whole scene, as a deployed
    model does. One split at a time: a masked copy of a full-size scene's cube is held only while
    its patches are cut."""
    full = {m: apply_normaliser(scene[m], normalisation[m]) for m in ("hsi", "lidar")}
    train = split["train_labels"] > 0
    test = split["test_labels"] > 0
    hidden = {"train": test | (split["validation_labels"] > 0), "validation": test, "test": np.zeros_like(test)}
    for name in SPLITS:
        yield name, {m: masked_cube(cube, train, hidden[name], fill) if disjoint else cube for m, cube in full.items()}


def build_patch_sets(scene: dict[str, Any], split: dict[str, Any], normalisation: dict[str, Any],
                     params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    size = int(params.get("patch_size", 7))
    disjoint = bool(params.get("disjoint", True))
    fill = str(params.get("fill", "nearest"))
    common = {
        "patch_size": size,
        "num_classes": len(scene["class_names"]),
        "class_names": list(scene["class_names"]),
        "grid_shape": list(scene["hsi"].shape[1:]),
        "scene": scene.get("name", "scene"),
        "disjoint": disjoint,
    }
    sets = []
    for name, cubes in visible_cubes(scene, split, normalisation, disjoint, fill):
        rows, cols, labels = labelled_pixels(split[f"{name}_labels"])
        patch_set = {"rows": rows, "cols": cols, "labels": labels, "split": name, **common}
        for modality, cube in cubes.items():
            patch_set[modality] = PatchExtractor(cube, size)(rows, cols)
        logger.info("%s patches: %d × (HSI %s, LiDAR %s)%s", name, labels.size, patch_set["hsi"].shape[1:],
                    patch_set["lidar"].shape[1:], " (disjoint)" if disjoint and name != "test" else "")
        sets.append(patch_set)
    return sets[0], sets[1], sets[2]
