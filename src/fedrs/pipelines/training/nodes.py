"""Training nodes: merge parameters, call the plain trainers or start Flower, package the results."""

from __future__ import annotations

import copy
import resource
import time
from typing import Any

import pandas as pd

from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.engine import SimulationResources, run_simulation_engine
from fedrs.federated.server import FederatedConfig
from fedrs.federated.standalone import summarise_local, train_centralized, train_local


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``override`` wins; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def model_spec(patches: dict[str, Any], model_params: dict[str, Any]) -> dict[str, Any]:
    return {"bands": int(patches["hsi"].shape[1]), "lidar_channels": int(patches["lidar"].shape[1]),
            "num_classes": int(patches["num_classes"]), **model_params}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def no_traffic() -> pd.DataFrame:
    """Centralized and local runs send nothing; an empty log keeps one schema for every algorithm."""
    return pd.DataFrame(columns=["round", "client_id", "direction", "bytes_dense", "bytes_sent"])


def _artifact(name: str, spec: dict[str, Any], modalities: list[str], state: dict) -> dict[str, Any]:
    return {"algorithm": name, "spec": spec, "modalities": modalities, "state": state}


def run_history(name: str, rounds: list[dict[str, Any]], started: float, **extra: Any) -> dict[str, Any]:
    return {"algorithm": name, "rounds": rounds, "wall_seconds": time.perf_counter() - started,
            "peak_rss_mb": _peak_rss_mb(), **extra}


def train_federated(manifest: dict[str, Any], partition_dir: str, checkpoint_dir: str, test_patches: dict[str, Any],
                    baseline: dict[str, Any], training: dict[str, Any]) -> tuple[dict, dict, pd.DataFrame]:
    params = merge(baseline, training)
    name = params["algorithm"]
    spec = model_spec(test_patches, params.get("model", {}))
    cfg = FederatedConfig.from_dict({**params.get("federated", {}), "algorithm": name, "model": spec,
                                     "train": params.get("train", {}), "seed": int(params["seed"]),
                                     "partition_dir": partition_dir, "checkpoint_dir": checkpoint_dir})
    started = time.perf_counter()
    result = run_simulation_engine(cfg, test_patches, int(manifest["num_clients"]),
                                   SimulationResources.from_dict(params.get("resources")))
    modalities = list(get_algorithm(name).modalities)
    history = run_history(name, result["history"], started, clients=result["clients"], layout=manifest["layout"])
    return _artifact(name, spec, modalities, result["state"]), history, pd.DataFrame(result["traffic"])


def train_pooled(train_patches: dict[str, Any], test_patches: dict[str, Any], baseline: dict[str, Any],
                 training: dict[str, Any]) -> tuple[dict, dict, pd.DataFrame]:
    params = merge(baseline, training)
    name = params["algorithm"]
    spec = model_spec(train_patches, params.get("model", {}))
    fed = params.get("federated", {})
    started = time.perf_counter()
    state, rounds = train_centralized(train_patches, test_patches, name, spec, params.get("train", {}),
                                      int(fed.get("num_rounds", 10)), int(params["seed"]), fed.get("eval_samples"),
                                      fed.get("lr_schedule", "cosine"))
    modalities = list(get_algorithm(name).modalities)
    return _artifact(name, spec, modalities, state), run_history(name, rounds, started), no_traffic()


def train_each_client(manifest: dict[str, Any], client_partitions: dict[str, Any], test_patches: dict[str, Any],
                      baseline: dict[str, Any], training: dict[str, Any]) -> tuple[dict, dict, pd.DataFrame]:
    params = merge(baseline, training)
    name = params["algorithm"]
    spec = model_spec(test_patches, params.get("model", {}))
    partitions = {int(entry["client_id"]): client_partitions[entry["partition"]]() for entry in manifest["clients"]}
    started = time.perf_counter()
    fed = params.get("federated", {})
    results, states = train_local(partitions, test_patches, name, spec, params.get("train", {}),
                                  int(fed.get("num_rounds", 10)), int(params["seed"]), fed.get("lr_schedule", "cosine"))
    summary = summarise_local(results)
    chosen = summary["median_client"]
    modalities = next(r["modalities"] for r in results if r["client_id"] == chosen)
    history = run_history(name, [], started, clients=results, **summary)
    return _artifact(name, spec, modalities, states[chosen]), history, no_traffic()
