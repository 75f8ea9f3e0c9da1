"""Partition node: training patch set → manifest, one file per client, and a figure."""

from __future__ import annotations

import logging
from typing import Any

from matplotlib.figure import Figure

from fedrs.partition import client_bundle, make_partition, partition_manifest
from fedrs.plots import client_class_figure

logger = logging.getLogger(__name__)


def partition_clients(train_patches: dict[str, Any], params: dict[str, Any], compute: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], Figure]:
    """The layout's clients, drawn with the run's seed (``compute``)."""
    params = {**params, "seed": int(compute["seed"])}
    clients = make_partition(train_patches, tuple(train_patches["grid_shape"]), params)
    manifest = partition_manifest(clients, train_patches["labels"], int(train_patches["num_classes"]), params)
    files = {entry["partition"]: client_bundle(train_patches, client)
             for entry, client in zip(manifest["clients"], clients, strict=False)}
    for entry in manifest["clients"]:
        logger.info("client %d (%s, site %s): %d pixels", entry["client_id"], "+".join(entry["modalities"]),
                    entry["site"], entry["num_samples"])
    return manifest, files, client_class_figure(manifest, list(train_patches["class_names"]))
