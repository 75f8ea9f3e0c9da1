"""Ingest nodes: raw layers (any distribution) → the validated scene and a look at it."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedrs.datasets.raster import Raster
from fedrs.plots import scene_overview_figure
from fedrs.scene.assemble import assemble_scene


def build_scene(hsi: Raster, lidar: Raster, train_labels: Raster, test_labels: Raster,
                params: dict[str, Any]) -> dict[str, Any]:
    return assemble_scene(hsi, lidar, train_labels, test_labels, params)


def summarise_scene(scene: dict[str, Any]) -> dict[str, Any]:
    k = len(scene["class_names"])
    train = np.bincount(scene["train_labels"].ravel(), minlength=k + 1)[1:]
    test = np.bincount(scene["test_labels"].ravel(), minlength=k + 1)[1:]
    return {
        "name": scene["name"],
        "rows": int(scene["hsi"].shape[1]),
        "cols": int(scene["hsi"].shape[2]),
        "hsi_bands": int(scene["hsi"].shape[0]),
        "lidar_channels": int(scene["lidar"].shape[0]),
        "georeferenced": bool(scene.get("crs")),
        "invalid_pixels": int(scene.get("invalid_pixels", 0)),
        "classes": [
            {"class": i + 1, "name": name, "train": int(train[i]), "test": int(test[i])}
            for i, name in enumerate(scene["class_names"])
        ],
        "train_pixels": int(train.sum()),
        "test_pixels": int(test.sum()),
    }


def plot_scene(scene: dict[str, Any]) -> Figure:
    return scene_overview_figure(scene)
