"""Training nodes: merge parameters, call the plain trainers or start Flower, package the results."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from fedrs.compute import with_compute
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.engine import SimulationResources, run_job
from fedrs.federated.jobs import RoundsJob
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.standalone import summarise_local, train_centralized, train_local
from fedrs.results import artifact, merge, model_spec, run_history, temperature_of, traffic_table


def federated_config(params: dict[str, Any], spec: dict[str, Any], compute: dict[str, Any], partition_dir: str = "",
                     checkpoint_dir: str | None = None, **extra: Any) -> FederatedConfig:
    """The one parse of an algorithm's ``federated`` block (defaults: ``FederatedConfig``), with the
    run's seed, device and precision (``compute``)."""
    return FederatedConfig.from_dict({**params.get("federated", {}), "algorithm": params["algorithm"], "model": spec,
                                      "train": with_compute(params.get("train"), compute),
                                      "seed": int(compute["seed"]), "partition_dir": partition_dir,
                                      "checkpoint_dir": checkpoint_dir, **extra})


def train_federated(manifest: dict[str, Any], partition_dir: str, checkpoint_dir: str, deployment_dir: str,
                    validation_patches: dict[str, Any], baseline: dict[str, Any], training: dict[str, Any],
                    federation: dict[str, Any], compute: dict[str, Any]) -> tuple[dict, dict, pd.DataFrame]:
    params = merge(baseline, training)
    spec = model_spec(validation_patches, params.get("model", {}))
    cfg = federated_config(params, spec, compute, partition_dir, checkpoint_dir)
    started = time.perf_counter()
    result = run_job(RoundsJob(cfg, validation_patches), int(manifest["num_clients"]), federation,
                     SimulationResources.from_dict(params.get("resources")), deployment_dir)
    modalities = list(get_algorithm(cfg.algorithm).modalities)
    history = run_history(cfg.algorithm, result["history"], started, cfg.train, clients=result["clients"],
                          layout=manifest["layout"])
    return (artifact(cfg.algorithm, spec, modalities, result["state"], **temperature_of(result["history"])), history,
            traffic_table(result["traffic"]))


def train_pooled(train_patches: dict[str, Any], validation_patches: dict[str, Any], baseline: dict[str, Any],
                 training: dict[str, Any], compute: dict[str, Any]) -> tuple[dict, dict, pd.DataFrame]:
    params = merge(baseline, training)
    spec = model_spec(train_patches, params.get("model", {}))
    cfg = federated_config(params, spec, compute)
    started = time.perf_counter()
    state, rounds = train_centralized(train_patches, validation_patches, cfg)
    modalities = list(get_algorithm(cfg.algorithm).modalities)
    return (artifact(cfg.algorithm, spec, modalities, state, **temperature_of(rounds)),
            run_history(cfg.algorithm, rounds, started, cfg.train), traffic_table([]))


def train_each_client(manifest: dict[str, Any], client_partitions: dict[str, Any], validation_patches: dict[str, Any],
                      baseline: dict[str, Any], training: dict[str, Any], compute: dict[str, Any]
                      ) -> tuple[dict, dict, pd.DataFrame]:
    params = merge(baseline, training)
    spec = model_spec(validation_patches, params.get("model", {}))
    cfg = federated_config(params, spec, compute)
    partitions = {int(entry["client_id"]): client_partitions[entry["partition"]]() for entry in manifest["clients"]}
    started = time.perf_counter()
    results, states = train_local(partitions, validation_patches, cfg)
    summary = summarise_local(results)
    chosen = summary["median_client"]
    modalities = next(r["modalities"] for r in results if r["client_id"] == chosen)
    history = run_history(cfg.algorithm, [], started, cfg.train, clients=results, **summary)
    return artifact(cfg.algorithm, spec, modalities, states[chosen]), history, traffic_table([])
