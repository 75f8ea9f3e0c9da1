"""What a training node hands on: the model artefact, the run history and the traffic table — one
layout for every algorithm, so evaluation, MLflow and the report read them all alike."""

from __future__ import annotations

import copy
import resource
import time
from typing import Any

import numpy as np
import pandas as pd

from fedrs.compute import compute_policy

TRAFFIC_COLUMNS = ["round", "client_id", "direction", "payload", "bytes_dense", "bytes_sent"]


def merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """Recursive dict merge: ``override`` wins; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def model_spec(patches: dict[str, Any], model_params: dict[str, Any]) -> dict[str, Any]:
    """A fusion-CNN or FedCMI spec: the data's shapes (bands, LiDAR channels, classes) + the model's settings."""
    return {"bands": int(patches["hsi"].shape[1]), "lidar_channels": int(patches["lidar"].shape[1]),
            "num_classes": int(patches["num_classes"]), **model_params}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def traffic_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per round, client, direction and payload: bytes dense and as sent (empty when nothing moved)."""
    return pd.DataFrame(rows, columns=TRAFFIC_COLUMNS)


def run_history(name: str, rounds: list[dict[str, Any]], started: float, train: dict[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    """A run's history: its rounds, wall time, peak memory and how it computed (device, precision)."""
    train = train or {}
    policy = compute_policy(str(train.get("device", "auto")), str(train.get("precision", "fp32")))
    return {"algorithm": name, "rounds": rounds, "wall_seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb(), "compute": policy.describe(), **extra}


def artifact(name: str, spec: dict[str, Any], modalities: list[str], state: dict, **extra: Any) -> dict[str, Any]:
    """The model artefact: enough to rebuild and run the model (FedDiff adds its U-Nets)."""
    return {"algorithm": name, "spec": spec, "modalities": modalities, "state": state, **extra}


def temperature_of(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """``{"temperature": T}`` where the run's last round divided its logits by a fitted T (the state
    already carries it; the evaluation reports what it changed), else nothing."""
    last = rounds[-1] if rounds else {}
    return {"temperature": float(last["temperature"])} if last.get("temperature") is not None else {}


ROUND_KEYS = ("round", "train_loss", "train_ce", "train_consistency", "train_unimodal_ce", "train_conv_weight_norm2",
              "train_infiltration_loss", "val_loss", "val_oa", "val_aa", "val_kappa", "val_l1", "lr", "bytes_up",
              "bytes_down", "bytes_up_dense", "bytes_down_dense", "loss_growing_rounds", "val_loss_growing_rounds",
              "val_oa_before_statistics", "dp_epsilon", "dp_noise_std", "dp_clipped", "exchange_noise_std",
              "exchange_clipped_fraction", "secagg_sums", "secagg_seconds", "val_oa_before_calibration",
              "calibration_clients", "calibration_pixels", "calibration_classes", "validation_clients",
              "validation_pixels", "bytes_validation", "noise", "dp_unit", "dp_record_epsilon", "dp_record_unit",
              "temperature", "temperature_inside_grid", "val_loss_before_temperature", "temperature_grid",
              "val_loss_by_temperature")

# the per-round curves an MLflow run shows (step = round)
MLFLOW_ROUND_KEYS = ("train_loss", "val_loss", "val_oa", "val_aa", "val_kappa", "bytes_down", "bytes_up", "dp_epsilon",
                     "dp_record_epsilon")
# the run-summary values an MLflow run logs beside the final scores
MLFLOW_SUMMARY_KEYS = ("wall_seconds", "peak_rss_mb", "mean_oa", "worst_oa", "clients_failed", "clients_dropped",
                       "updates_rejected", "loss_growing_rounds", "val_loss_growing_rounds", "dp_epsilon",
                       "dp_record_epsilon", "secagg_seconds_per_round",
                       "oa_before_calibration", "temperature", "val_loss_before_temperature", "deterministic_noise")


def lost_clients(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Clients lost over a run's rounds: failed (raised), dropped (no reply or no partner), updates
    rejected, rounds that kept the global model."""
    count = {key: sum(len(r.get(key) or []) for r in rounds) for key in ("failed", "dropped", "rejected")}
    return {"clients_failed": count["failed"], "clients_dropped": count["dropped"],
            "updates_rejected": count["rejected"],
            "rounds_not_aggregated": sum(1 for r in rounds if r.get("aggregated") is False)}


def not_covered(history: dict[str, Any], stages: list[dict[str, Any]], key: str = "dp_epsilon") -> list[str]:
    """What of a private run trains on or releases the clients' pixels outside its ε (``key``: the
    client-level or the record-level one): an earlier stage trained without that DP (FedDiff's
    DDPMs), and — client-level — outputs relayed between clients (FedDiff's exchange;
    ``exchange_privacy`` is a measured defence there; the record-level accountant counts it)."""
    out = []
    for stage in stages[1:]:
        for name, rounds in (stage.get("stages") or {}).items():
            if rounds and any(r.get(key) is None for r in rounds):
                out.append(f"{stage.get('algorithm', 'an earlier stage')} ({name})")
    if key == "dp_epsilon" and any(r.get("relayed_outputs") for r in history.get("rounds") or []):
        out.append("the relayed branch outputs")
    return out


def run_summary(history: dict[str, Any]) -> dict[str, Any]:
    """What the report needs of a run, small enough to keep in git beside the scores: the rounds'
    loss, test scores and bytes, traffic and wall time over every stage (FedDiff's diffusion stage
    included), peak memory, how it computed, and the clients it lost."""
    stages = [history, *(history.get("earlier_stages") or [])]
    every_round = [r for h in stages for r in h.get("rounds") or []]
    every_round += [r for h in stages for stage in (h.get("stages") or {}).values() for r in stage]
    rounds = history.get("rounds") or []
    lost = lost_clients(every_round)
    summary = {
        "rounds": [{k: r[k] for k in ROUND_KEYS if r.get(k) is not None} for r in rounds],
        "num_rounds": len(rounds),
        "bytes_sent": int(sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in every_round)),
        # the clients' scoring of the rounds (validation: clients), both ways, apart from training's bytes
        "validation_bytes_sent": int(sum(r.get("bytes_validation", 0) for r in every_round)),
        "bytes_dense": int(sum(r.get("bytes_up_dense", r.get("bytes_up", 0))
                               + r.get("bytes_down_dense", r.get("bytes_down", 0)) for r in every_round)),
        "wall_seconds": float(sum(h.get("wall_seconds", 0.0) for h in stages)),
        "peak_rss_mb": float(max((h.get("peak_rss_mb", 0.0) for h in stages), default=0.0)),
        "compute": history.get("compute", {}),
        **lost,
        "lost_clients": bool(lost["clients_failed"] or lost["clients_dropped"]),
        "loss_growing_rounds": int(rounds[-1].get("loss_growing_rounds", 0)) if rounds else 0,
        "val_loss_growing_rounds": int(rounds[-1].get("val_loss_growing_rounds", 0)) if rounds else 0,
    }
    grown = summary["loss_growing_rounds"]
    span = [rounds[-grown - 1].get("val_loss"), rounds[-1].get("val_loss")] if grown else [None]
    if None not in span:  # the global model's validation loss over the rounds the training loss grew
        summary["val_loss_over_growth"] = [float(v) for v in span]
    for key in ("mean_oa", "worst_oa", "best_oa"):
        if key in history:
            summary[key] = history[key]
    for level in ("", "_record"):  # client-level DP, record-level DP: the stage's budget, unit, what it misses
        epsilons = [r[f"dp{level}_epsilon"] for r in rounds if r.get(f"dp{level}_epsilon") is not None]
        if epsilons:
            summary[f"dp{level}_epsilon"] = float(epsilons[-1])
            summary[f"dp{level}_unit"] = rounds[-1].get(f"dp{level}_unit", "organisation")
            summary[f"dp{level}_not_covered"] = ", ".join(not_covered(history, stages, f"dp{level}_epsilon")) or "–"
    if rounds and rounds[-1].get("val_oa_before_calibration") is not None:  # what the calibration changed
        summary["oa_before_calibration"] = float(rounds[-1]["val_oa_before_calibration"])
    for key in ("temperature", "val_loss_before_temperature"):  # what temperature scaling did
        if rounds and rounds[-1].get(key) is not None:
            summary[key] = float(rounds[-1][key])
    flagged = [r["noise"] for r in rounds if r.get("noise")]
    if flagged:  # deterministic (test) noise: anyone with the run seed can remove it
        summary["noise"] = flagged[-1]
        summary["deterministic_noise"] = 1.0
    secure = [r["secagg_seconds"] for r in rounds if r.get("secagg_seconds") is not None]
    if secure:  # secure aggregation: what its protocol cost per round
        summary["secagg_seconds_per_round"] = float(np.mean(secure))
    return summary
