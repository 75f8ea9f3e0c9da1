"""FedDiff nodes: thin wrappers that build configs, start Flower runs and package artefacts."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from fedrs.cache import cached_array, content_digest
from fedrs.federated.engine import SimulationResources, run_simulation_engine
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.feddiff import MODALITIES, diffusion_feature_bundle
from fedrs.federated.server import FederatedConfig
from fedrs.federated.standalone import train_centralized
from fedrs.models.unet import DiffusionUNet, UNetSpec
from fedrs.pipelines.training.nodes import no_traffic, run_history  # one history layout for all

logger = logging.getLogger(__name__)


def unet_spec(patches: dict[str, Any], modality: str, params: dict[str, Any]) -> dict[str, Any]:
    return {**params["diffusion"]["model"], "in_channels": int(patches[modality].shape[1])}


def classifier_spec(patches: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    model = params["diffusion"]["model"]
    timesteps = list(params["features"]["timesteps"])
    feature_channels = int(model["base_channels"]) * int(list(model["channel_mult"])[-1]) * len(timesteps)
    return {"hsi_channels": int(patches["hsi"].shape[1]), "lidar_channels": int(patches["lidar"].shape[1]),
            "hsi_feature_channels": feature_channels, "lidar_feature_channels": feature_channels,
            "num_classes": int(patches["num_classes"]), **params["classifier"]["model"],
            "timesteps": timesteps, "feature_seed": int(params["features"]["seed"])}


def classifier_algorithm(params: dict[str, Any], centralized: bool = False) -> str:
    """``feddiff``, or a single-modality variant when ``classifier.modalities`` names one."""
    modalities = tuple(params["classifier"].get("modalities", MODALITIES))
    if centralized:
        return "feddiff_centralized"
    return "feddiff" if set(modalities) == set(MODALITIES) else f"feddiff_{modalities[0]}"


def _artifact(name: str, spec: dict[str, Any], unets: dict[str, Any], state: dict) -> dict[str, Any]:
    modalities = list(get_algorithm(name).modalities)
    return {"algorithm": name, "spec": spec, "modalities": modalities, "state": state,
            "unets": {m: {"spec": unets[m]["spec"], "state": unets[m]["state"]} for m in modalities}}


def _run(algorithm: str, spec: dict[str, Any], stage: dict[str, Any], params: dict[str, Any], partition_dir: str,
         checkpoint_dir: str, test: dict[str, Any], num_nodes: int, **extra: Any) -> dict[str, Any]:
    cfg = FederatedConfig.from_dict({**stage.get("federated", {}), "algorithm": algorithm, "model": spec,
                                     "train": stage.get("train", {}), "seed": int(params["seed"]),
                                     "partition_dir": partition_dir, "checkpoint_dir": f"{checkpoint_dir}/{algorithm}",
                                     **extra})
    return run_simulation_engine(cfg, test, num_nodes, SimulationResources.from_dict(params.get("resources")))


def train_diffusion(manifest: dict[str, Any], partition_dir: str, checkpoint_dir: str, test_patches: dict[str, Any],
                    params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage 1: one federated DDPM per modality, over the clients that hold it."""
    started = time.perf_counter()
    unets, rounds = {}, {}
    for modality in MODALITIES:
        spec = unet_spec(test_patches, modality, params)
        result = _run(f"ddpm_{modality}", spec, params["diffusion"], params, partition_dir, checkpoint_dir,
                      test_patches, int(manifest["num_clients"]))
        unets[modality] = {"spec": spec, "state": result["state"]}
        rounds[modality] = result["history"]
    return unets, run_history("feddiff_diffusion", [], started, stages=rounds)


def extract_features(unets: dict[str, Any], manifest: dict[str, Any], client_partitions: dict[str, Any],
                     cache_dir: str, params: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Stage 2: each client's features of its own modality, with that modality's global U-Net.

    Each client's features are cached under the digest of the U-Net (spec and weights), its patches,
    the timesteps and the seed: a re-run with an unchanged model and scene loads them instead."""
    timesteps, seed = list(params["features"]["timesteps"]), int(params["features"]["seed"])
    use_cache = bool(params["features"].get("cache", True))
    digests = {m: content_digest(u["spec"], u["state"]) for m, u in unets.items()}
    models = {}
    for modality, entry in unets.items():
        model = DiffusionUNet(UNetSpec.from_dict(entry["spec"]))
        model.load_state_dict(entry["state"])
        models[modality] = model
    files, reused = {}, []
    for client in manifest["clients"]:
        bundle = client_partitions[client["partition"]]()
        (modality,) = client["modalities"]
        key = content_digest(digests[modality], bundle[modality], timesteps, seed)
        features, hit = cached_array(cache_dir if use_cache else None, f"{modality}-{key}",
                                     lambda: diffusion_feature_bundle(models[modality], unets[modality]["spec"],
                                                                      bundle[modality], timesteps, seed))
        files[client["partition"]] = {f"{modality}_features": features}
        if hit:
            reused.append(client["partition"])
    if reused:
        logger.info("Diffusion features reused from %s for %d of %d clients", cache_dir, len(reused), len(files))
    return files, {"timesteps": timesteps, "seed": seed, "unets": digests, "reused_from_cache": reused,
                   "clients": {k: list(v[next(iter(v))].shape) for k, v in files.items()}}


def train_classifier(manifest: dict[str, Any], partition_dir: str, features_dir: str, features_manifest: dict[str, Any],
                     checkpoint_dir: str, unets: dict[str, Any], test_patches: dict[str, Any], params: dict[str, Any]
                     ) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Stage 3: federated classifier rounds with the compressed feature exchange."""
    started = time.perf_counter()
    spec = classifier_spec(test_patches, params)
    name = classifier_algorithm(params)
    artifact = _artifact(name, spec, unets, {})
    # the server holds the global U-Nets after stage 1, so it scores the global model centrally
    test_inputs = get_algorithm(name).prepare(artifact, test_patches)
    result = _run(name, spec, params["classifier"], params, partition_dir, checkpoint_dir, test_inputs,
                  int(manifest["num_clients"]), client_data_dirs=[features_dir])
    artifact["state"] = result["state"]
    history = run_history(name, result["history"], started, clients=result["clients"],
                       features=features_manifest, layout=manifest["layout"])
    traffic = pd.DataFrame(result["traffic"]) if result["traffic"] else no_traffic()
    return artifact, history, traffic, test_inputs





def train_diffusion_pooled(train_patches: dict[str, Any], test_patches: dict[str, Any], params: dict[str, Any]
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Centralized FedDiff, stage 1: each DDPM on every training pixel in one place."""
    started = time.perf_counter()
    stage = params["diffusion"]
    unets, rounds = {}, {}
    for modality in MODALITIES:
        spec = unet_spec(train_patches, modality, params)
        state, rounds[modality] = train_centralized(
            train_patches, test_patches, f"ddpm_{modality}", spec, stage.get("train", {}),
            int(stage.get("federated", {}).get("num_rounds", 1)), int(params["seed"]),
            stage.get("federated", {}).get("eval_samples"), stage.get("federated", {}).get("lr_schedule", "constant"))
        unets[modality] = {"spec": spec, "state": state}
    return unets, run_history("feddiff_centralized_diffusion", [], started, stages=rounds)


def train_classifier_pooled(train_patches: dict[str, Any], unets: dict[str, Any], test_patches: dict[str, Any],
                            params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Centralized FedDiff, stage 3: the whole classifier on every training pixel — the upper bound."""
    started = time.perf_counter()
    spec = classifier_spec(test_patches, params)
    name = classifier_algorithm(params, centralized=True)
    artifact = _artifact(name, spec, unets, {})
    algorithm = get_algorithm(name)
    train_inputs, test_inputs = algorithm.prepare(artifact, train_patches), algorithm.prepare(artifact, test_patches)
    stage = params["classifier"]
    fed = stage.get("federated", {})
    state, rounds = train_centralized(train_inputs, test_inputs, name, spec, stage.get("train", {}),
                                      int(fed.get("num_rounds", 1)), int(params["seed"]), fed.get("eval_samples"),
                                      fed.get("lr_schedule", "cosine"))
    artifact["state"] = state
    return artifact, run_history(name, rounds, started), no_traffic(), test_inputs
