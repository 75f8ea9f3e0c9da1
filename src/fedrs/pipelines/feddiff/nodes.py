"""FedDiff nodes: thin wrappers that build configs, start federated jobs and package artefacts.
Each node takes the parameter blocks it uses: ``feddiff.diffusion`` (stage 1), ``feddiff.features``
(stage 2), ``feddiff.classifier`` (stage 3), the run's ``seed``, simulation ``resources`` and the
shared ``federation`` block (which engine: simulation, or a SuperLink on the deployment engine)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from fedrs.cache import content_digest
from fedrs.compute import with_compute
from fedrs.feddiff.algorithm import MODALITIES
from fedrs.feddiff.features import FeatureJob, feature_manifest
from fedrs.feddiff.unet import UNetSpec
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.engine import FederationConfig, SimulationResources, run_job
from fedrs.federated.jobs import FeaturesJob, RoundsJob
from fedrs.federated.local import TrainConfig
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.standalone import train_centralized
from fedrs.results import artifact, run_history, temperature_of, traffic_table

logger = logging.getLogger(__name__)


def unet_spec(patches: dict[str, Any], modality: str, diffusion: dict[str, Any], patch_params: dict[str, Any]
              ) -> dict[str, Any]:
    return {**diffusion["model"], "in_channels": int(patches[modality].shape[1]),
            "size": int(patch_params["unet_size"])}


def diffusion_modalities(diffusion: dict[str, Any]) -> tuple[str, ...]:
    """The modalities stage 1 trains a DDPM for (``feddiff.diffusion.modalities``): a subset of hsi,
    lidar. Stage 2 computes their features and stage 3 gives their branches a diffusion stem; none
    (``[]``): no DDPM is trained or sent, and the classifier takes no diffusion features."""
    chosen = diffusion.get("modalities", list(MODALITIES))
    if (not isinstance(chosen, list | tuple) or len(set(chosen)) != len(chosen)
            or not set(chosen) <= set(MODALITIES)):
        raise ValueError(f"feddiff.diffusion.modalities is {chosen!r}; expected a list of distinct modalities "
                         f"from {list(MODALITIES)} ([]: no diffusion at all)")
    return tuple(m for m in MODALITIES if m in chosen)


def classifier_spec(patches: dict[str, Any], unets: dict[str, Any], classifier: dict[str, Any],
                    timesteps: list[int], seed: int, diffused: tuple[str, ...] | None = None,
                    unet_size: int | None = None) -> dict[str, Any]:
    """The classifier's spec: data shapes, the modalities whose branches get a diffusion stem
    (``diffused``, from ``feddiff.diffusion.modalities``; default: every modality with a U-Net),
    their feature channels at the diffusion features' timesteps, and the seed that drew the
    features' noise. A stage-3 run may use fewer U-Nets than stage 1 trained, never more. The
    branches see patches at ``unet_size`` (``patches.unet_size``), U-Net or none; ``use_diffusion``
    unset (null) is whether any modality is diffused."""
    timesteps = list(timesteps)
    diffused = tuple(m for m in MODALITIES if m in unets) if diffused is None else tuple(diffused)
    missing = [m for m in diffused if m not in unets]
    if missing:
        raise ValueError(f"feddiff.diffusion.modalities names {missing}, but stage 1 trained no DDPM for them "
                         f"(its U-Nets: {sorted(unets)}): run stage 1 (feddiff.train_diffusion) again")
    sizes = {m: int(unets[m]["spec"]["size"]) for m in diffused}
    if unet_size is not None and set(sizes.values()) - {int(unet_size)}:
        raise ValueError(f"patches.unet_size is {unet_size}, but stage 1's U-Nets take {sizes}: run stage 1 "
                         "(feddiff.train_diffusion) again")
    model = dict(classifier["model"])
    if model.get("use_diffusion") is None:  # unset: diffusion features wherever stage 1 trained a DDPM
        model["use_diffusion"] = bool(diffused)
    branches = classifier.get("modalities", list(MODALITIES))
    if model["use_diffusion"] and not set(diffused) & set(branches):
        raise ValueError(f"feddiff.classifier.modalities {list(branches)} and feddiff.diffusion.modalities "
                         f"{list(diffused)} share no modality: no branch would use diffusion features. Set "
                         "feddiff.classifier.model.use_diffusion: false for a classifier without them")
    spec = {"hsi_channels": int(patches["hsi"].shape[1]), "lidar_channels": int(patches["lidar"].shape[1]),
            "num_classes": int(patches["num_classes"]), **model,
            "diffusion_modalities": list(diffused), "timesteps": timesteps, "feature_seed": int(seed)}
    if unet_size is not None:
        spec["unet_size"] = int(unet_size)
    for modality in MODALITIES:
        channels = 0
        if modality in diffused:
            unet = UNetSpec.from_dict(unets[modality]["spec"])
            channels = unet.base_channels * unet.channel_mult[-1] * len(timesteps)
            spec["unet_size"] = unet.size
        spec[f"{modality}_feature_channels"] = channels
    return spec


def classifier_algorithm(classifier: dict[str, Any], centralized: bool = False,
                         manifest: dict[str, Any] | None = None) -> str:
    """``feddiff``, or a single-modality variant when ``classifier.modalities`` names one, or
    ``feddiff_sites`` when the partition left each site whole (``split_modalities: false``)."""
    modalities = tuple(classifier.get("modalities", MODALITIES))
    if centralized:
        return "feddiff_centralized"
    whole = manifest is not None and all(len(c["modalities"]) > 1 for c in manifest["clients"])
    if whole:
        if set(modalities) != set(MODALITIES):
            raise ValueError(f"feddiff.classifier.modalities is {list(modalities)}, but each site holds both "
                             "modalities (modality_split.partition.split_modalities: false); expected both")
        return "feddiff_sites"
    return "feddiff" if set(modalities) == set(MODALITIES) else f"feddiff_{modalities[0]}"


def _artifact(name: str, spec: dict[str, Any], unets: dict[str, Any], state: dict) -> dict[str, Any]:
    modalities = list(get_algorithm(name).modalities)
    used = [m for m in modalities if m in spec["diffusion_modalities"]]
    return artifact(name, spec, modalities, state,
                    unets={m: {"spec": unets[m]["spec"], "state": unets[m]["state"]} for m in used})


def _config(algorithm: str, spec: dict[str, Any], stage: dict[str, Any], compute: dict[str, Any],
            **extra: Any) -> FederatedConfig:
    return FederatedConfig.from_dict({**stage.get("federated", {}), "algorithm": algorithm, "model": spec,
                                      "train": with_compute(stage.get("train"), compute),
                                      "seed": int(compute["seed"]), **extra})


def _store(feature_cache_dir: str, federation: dict[str, Any]) -> str:
    """Simulated (and in-process) clients keep their features in the project's store; deployed ones
    in their own."""
    return feature_cache_dir if FederationConfig.from_dict(federation).engine != "deployment" else ""


def train_diffusion(manifest: dict[str, Any], partition_dir: str, checkpoint_dir: str, deployment_dir: str,
                    validation_patches: dict[str, Any], diffusion: dict[str, Any], patch_params: dict[str, Any],
                    resources: dict[str, Any], federation: dict[str, Any], compute: dict[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stage 1: one federated DDPM per modality of ``diffusion.modalities``, over the clients that hold it."""
    started = time.perf_counter()
    unets, rounds = {}, {}
    for modality in diffusion_modalities(diffusion):
        spec = unet_spec(validation_patches, modality, diffusion, patch_params)
        cfg = _config(f"ddpm_{modality}", spec, diffusion, compute, partition_dir=partition_dir,
                      checkpoint_dir=f"{checkpoint_dir}/ddpm_{modality}")
        result = run_job(RoundsJob(cfg, validation_patches), int(manifest["num_clients"]), federation,
                         SimulationResources.from_dict(resources), deployment_dir)
        unets[modality] = {"spec": spec, "state": result["state"]}
        rounds[modality] = result["history"]
    return unets, run_history("feddiff_diffusion", [], started, with_compute(diffusion.get("train"), compute),
                              stages=rounds)


def extract_features(unets: dict[str, Any], manifest: dict[str, Any], partition_dir: str, feature_cache_dir: str,
                     deployment_dir: str, features: dict[str, Any], resources: dict[str, Any],
                     federation: dict[str, Any], compute: dict[str, Any]) -> dict[str, Any]:
    """Stage 2, on the clients: each one receives the global U-Net of its modality and computes the
    features of its own pixels into its own store (``fedrs.feddiff.features``); this node only
    learns their shapes and digests. A store keeps features of an unchanged U-Net and partition."""
    job = FeatureJob(unets=unets, timesteps=list(features["timesteps"]), seed=int(compute["seed"]),
                     device=str(compute["device"]), precision=str(compute["precision"]),
                     cache=bool(features.get("cache", True)), partition_dir=partition_dir,
                     store=_store(feature_cache_dir, federation))
    if unets:
        result = run_job(FeaturesJob(job), int(manifest["num_clients"]), federation,
                         SimulationResources.from_dict(resources), deployment_dir)
    else:  # no DDPM (diffusion.modalities: []): nothing to send or compute, no federation to start;
        # the store is there, empty, as every run's output (DVC tracks it)
        if job.store:
            Path(job.store).mkdir(parents=True, exist_ok=True)
        result = feature_manifest(job)
    policy = TrainConfig.from_dict(with_compute({}, compute)).policy()
    return {**result, "compute": policy.describe()}


def train_classifier(manifest: dict[str, Any], partition_dir: str, features_manifest: dict[str, Any],
                     checkpoint_dir: str, deployment_dir: str, unets: dict[str, Any], diffusion_history: dict[str, Any],
                     validation_patches: dict[str, Any], test_patches: dict[str, Any], diffusion: dict[str, Any],
                     classifier: dict[str, Any], patch_params: dict[str, Any], resources: dict[str, Any],
                     federation: dict[str, Any], compute: dict[str, Any]
                     ) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Stage 3: federated classifier rounds with the compressed feature exchange; each client reads
    the features it computed in stage 2 (named by ``features_manifest``)."""
    started = time.perf_counter()
    # the features the clients computed in stage 2, as its manifest names them
    spec = classifier_spec(validation_patches, unets, classifier, features_manifest["timesteps"],
                           features_manifest["seed"], diffusion_modalities(diffusion), patch_params["unet_size"])
    name = classifier_algorithm(classifier, manifest=manifest)
    model_artifact = _artifact(name, spec, unets, {})
    # the server holds the global U-Nets after stage 1, so the evaluation pipeline scores the final model
    # centrally (validation and test pixels); the rounds are scored by the clients (validation: clients)
    # or, with validation: server, on these validation inputs
    validation_inputs, test_inputs = (get_algorithm(name).prepare(model_artifact, patches, with_compute({}, compute))
                                      for patches in (validation_patches, test_patches))
    digests = {m: content_digest(u["spec"], u["state"]) for m, u in unets.items()}
    if features_manifest["unets"] != digests:
        raise ValueError(f"the features manifest names U-Nets {features_manifest['unets']}, but stage 1's are "
                         f"{digests}: run stage 2 (feddiff.extract_features) again")
    client_features = features_manifest["settings"] if spec["use_diffusion"] else None
    cfg = _config(name, spec, classifier, compute, partition_dir=partition_dir,
                  checkpoint_dir=f"{checkpoint_dir}/{name}", client_features=client_features)
    result = run_job(RoundsJob(cfg, validation_inputs), int(manifest["num_clients"]), federation,
                     SimulationResources.from_dict(resources), deployment_dir)
    model_artifact.update(state=result["state"], **temperature_of(result["history"]))
    history = run_history(
        name,
        result["history"],
        started,
        cfg.train,
        clients=result["clients"],
        features={k: v for k, v in features_manifest.items() if k != "traffic"},
        layout=manifest["layout"],
        earlier_stages=[diffusion_history, features_stage(features_manifest)],
    )
    traffic = traffic_table(features_manifest["traffic"] + result["traffic"])
    return model_artifact, history, traffic, validation_inputs, test_inputs


def features_stage(features_manifest: dict[str, Any]) -> dict[str, Any]:
    """Stage 2 as a history stage: one exchange, the global U-Nets down to every client (counted in
    the whole run's traffic; nothing comes back but shapes)."""
    down = [t for t in features_manifest["traffic"] if t["direction"] == "down"]
    row = {"round": 0, "bytes_down": sum(t["bytes_sent"] for t in down),
           "bytes_down_dense": sum(t["bytes_dense"] for t in down), "bytes_up": 0, "bytes_up_dense": 0}
    return {"algorithm": "feddiff_features", "rounds": [row], "wall_seconds": float(features_manifest["seconds"])}


def train_diffusion_pooled(
    train_patches: dict[str, Any],
    validation_patches: dict[str, Any],
    diffusion: dict[str, Any],
    patch_params: dict[str, Any],
    compute: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Centralized FedDiff, stage 1: each DDPM on every training pixel in one place."""
    started = time.perf_counter()
    unets, rounds = {}, {}
    for modality in diffusion_modalities(diffusion):
        spec = unet_spec(train_patches, modality, diffusion, patch_params)
        state, rounds[modality] = train_centralized(
            train_patches, validation_patches, _config(f"ddpm_{modality}", spec, diffusion, compute)
        )
        unets[modality] = {"spec": spec, "state": state}
    train = with_compute(diffusion.get("train"), compute)
    return unets, run_history("feddiff_centralized_diffusion", [], started, train, stages=rounds)


def train_classifier_pooled(
    train_patches: dict[str, Any],
    unets: dict[str, Any],
    diffusion_history: dict[str, Any],
    validation_patches: dict[str, Any],
    test_patches: dict[str, Any],
    diffusion: dict[str, Any],
    classifier: dict[str, Any],
    features: dict[str, Any],
    patch_params: dict[str, Any],
    compute: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Centralized FedDiff, stage 3: the whole classifier on every training pixel — the upper bound."""
    started = time.perf_counter()
    spec = classifier_spec(train_patches, unets, classifier, features["timesteps"], compute["seed"],
                           diffusion_modalities(diffusion), patch_params["unet_size"])
    name = classifier_algorithm(classifier, centralized=True)
    model_artifact = _artifact(name, spec, unets, {})
    algorithm = get_algorithm(name)
    train_inputs, validation_inputs, test_inputs = (
        algorithm.prepare(model_artifact, patches, with_compute({}, compute))
        for patches in (train_patches, validation_patches, test_patches))
    cfg = _config(name, spec, classifier, compute)
    state, rounds = train_centralized(train_inputs, validation_inputs, cfg)
    model_artifact.update(state=state, **temperature_of(rounds))
    history = run_history(name, rounds, started, cfg.train, earlier_stages=[diffusion_history])
    return model_artifact, history, traffic_table([]), validation_inputs, test_inputs
