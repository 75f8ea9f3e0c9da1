"""Tiny seeded client data shared by the federated unit tests."""

import numpy as np


def tiny_client_data(rng, modalities=("hsi", "lidar"), n=24):
    """``n`` pixels of 3 classes: 5-band HSI and 1-channel LiDAR patches, 5×5."""
    out = {"labels": rng.integers(0, 3, n)}
    if "hsi" in modalities:
        out["hsi"] = rng.standard_normal((n, 5, 5, 5)).astype(np.float32)
    if "lidar" in modalities:
        out["lidar"] = rng.standard_normal((n, 1, 5, 5)).astype(np.float32)
    return out


# the models of the tiny data: a fusion CNN and a FedDiff classifier with 16 feature channels a modality
TINY_FUSION_SPEC = {"bands": 5, "lidar_channels": 1, "num_classes": 3, "width": 8, "dim": 8}
TINY_FEDDIFF_SPEC = {"hsi_channels": 5, "lidar_channels": 1, "hsi_feature_channels": 16,
                     "lidar_feature_channels": 16, "num_classes": 3, "timesteps": [5], "feature_seed": 0}


def with_diffusion_features(rng, data):
    """``data`` with random 16-channel 4×4 diffusion features for each modality it holds."""
    for m in ("hsi", "lidar"):
        if m in data:
            data[f"{m}_features"] = rng.standard_normal((len(data["labels"]), 16, 4, 4)).astype(np.float32)
    return data
