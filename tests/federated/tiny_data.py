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
