"""Partition node: training (and validation) patch sets → manifest, one file per client, and a figure."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedrs.partition import assign_validation, client_bundle, make_partition, partition_manifest
from fedrs.plots import client_class_figure

logger = logging.getLogger(__name__)


def partition_clients(train_patches: dict[str, Any], validation_patches: dict[str, Any], params: dict[str, Any],
                      compute: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], Figure]:
    """The layout's clients, drawn with the run's seed (``compute``); each keeps its own validation
    pixels (``fedrs.partition.assign_validation``) beside its training pixels."""
    params = {**params, "seed": int(compute["seed"])}
    clients = make_partition(train_patches, tuple(train_patches["grid_shape"]), params)
    validation = assign_validation(clients, train_patches, validation_patches)
    manifest = partition_manifest(clients, train_patches["labels"], int(train_patches["num_classes"]), params,
                                  validation, np.asarray(validation_patches["labels"]))
    files = {entry["partition"]: client_bundle(train_patches, client, validation_patches, rows)
             for entry, client, rows in zip(manifest["clients"], clients, validation, strict=True)}
    for entry in manifest["clients"]:
        logger.info("client %d (%s, site %s): %d pixels, %d validation pixels", entry["client_id"],
                    "+".join(entry["modalities"]), entry["site"], entry["num_samples"], entry["validation_samples"])
    return manifest, files, client_class_figure(manifest, list(train_patches["class_names"]))
