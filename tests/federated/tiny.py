"""Tiny federations on disk (partition files + test patches), built with the library functions:
the session fixtures of tests/federated and the strict-mode runs of tests/strict_runs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrs.datasets import NpzDataset
from fedrs.partition import assign_validation, client_bundle, make_partition
from fedrs.pipelines.patches.nodes import build_patch_sets, fit_normalisation
from fedrs.scene.assemble import assemble_scene
from fedrs.scene.synthetic import generate_synthetic_scene
from tests.conftest import TINY_SCENE

TINY_MODEL = {"width": 8, "dim": 16}


def train_and_held_out(scene: dict, patch_size: int) -> tuple[dict, dict]:
    """The tiny scenes' training patches and the held-out patches every round is scored on: the
    scene's own split with no validation carved and no masking, so that these fixtures (and the
    strict digests measured on them on other CPU kinds) stay what they were before the validation
    split existed. The carving and the masking are tested in tests/test_splits.py and the pipelines."""
    split = {"train_labels": scene["train_labels"], "validation_labels": np.zeros_like(scene["train_labels"]),
             "test_labels": scene["test_labels"]}
    train, _, held_out = build_patch_sets(scene, split, fit_normalisation(scene, split, {}),
                                          {"patch_size": patch_size, "disjoint": False})
    return train, held_out


def tiny_patch_sets(patch_size: int, **scene_changes) -> tuple[dict, dict]:
    """``train_and_held_out`` on the tiny synthetic scene (with ``scene_changes`` to its generator's
    settings), assembled as the pipelines assemble it."""
    raw = generate_synthetic_scene({**TINY_SCENE, **scene_changes})
    scene = assemble_scene(raw["hsi"], raw["lidar"], raw["train_labels"], raw["test_labels"], {})
    return train_and_held_out(scene, patch_size)


def horizontal_federation(root: Path) -> dict:
    """Three IID clients holding both modalities."""
    root.mkdir(parents=True, exist_ok=True)
    train, test = tiny_patch_sets(5)
    clients = make_partition(
        train,
        tuple(train["grid_shape"]),
        {"layout": "horizontal", "num_clients": 3, "scheme": "iid", "multimodal_ratio": 1.0, "seed": 0},
    )
    # each client also holds its own share of the held-out pixels, to score them itself (validation: clients)
    for c, rows in zip(clients, assign_validation(clients, train, test), strict=True):
        NpzDataset(str(root / f"client_{c.client_id:03d}.npz")).save(client_bundle(train, c, test, rows))
    spec = {
        "bands": int(train["hsi"].shape[1]),
        "lidar_channels": int(train["lidar"].shape[1]),
        "num_classes": int(train["num_classes"]),
        **TINY_MODEL,
    }
    return {"dir": str(root), "test": test, "spec": spec, "num_clients": 3}


def split_federation(root: Path) -> dict:
    """FedDiff's layout: 2 sites × {HSI holder, LiDAR holder}, with (random) diffusion features."""
    features = root / "features"
    features.mkdir(parents=True)
    train, test = tiny_patch_sets(5)
    clients = make_partition(
        train,
        tuple(train["grid_shape"]),
        {"layout": "modality_split", "num_sites": 2, "min_samples_per_client": 2, "seed": 0},
    )
    rng = np.random.default_rng(0)
    drawn = {c.client_id: rng.standard_normal((len(c.indices), 16, 4, 4)).astype(np.float32) for c in clients}
    test = {
        **test,
        **{
            f"{m}_features": rng.standard_normal((len(test["labels"]), 16, 4, 4)).astype(np.float32)
            for m in ("hsi", "lidar")
        },
    }
    # each site also holds its own share of the held-out pixels (with the same features the server's copy
    # has), to score them itself (validation: clients)
    for c, rows in zip(clients, assign_validation(clients, train, test), strict=True):
        name = f"client_{c.client_id:03d}.npz"
        NpzDataset(str(root / name)).save(client_bundle(train, c, test, rows))
        (modality,) = c.modalities
        NpzDataset(str(features / name)).save({f"{modality}_features": drawn[c.client_id],
                                               f"validation_{modality}_features": test[f"{modality}_features"][rows]})
    spec = {
        "hsi_channels": int(train["hsi"].shape[1]),
        "lidar_channels": int(train["lidar"].shape[1]),
        "hsi_feature_channels": 16,
        "lidar_feature_channels": 16,
        "num_classes": int(train["num_classes"]),
        "timesteps": [5],
        "feature_seed": 0,
    }
    return {"dir": str(root), "features_dir": str(features), "test": test, "spec": spec, "num_clients": len(clients)}
