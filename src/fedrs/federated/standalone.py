"""The two reference points that need no federation: centralized (all pixels pooled — the upper
bound) and local (each client alone). Same model, local update and scoring as the federated runs,
and the same round structure (``num_rounds`` × ``epochs``), so their curves line up."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.local import derive_seed, lr_at_round
from fedrs.federated.server import eval_subset


def train_centralized(train: dict[str, Any], test: dict[str, Any], algorithm_name: str, model_spec: dict[str, Any],
                      train_cfg: dict[str, Any], num_rounds: int, seed: int, eval_samples: int | None = None,
                      lr_schedule: str = "cosine") -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    algorithm = get_algorithm(algorithm_name)
    torch.manual_seed(derive_seed(seed, 0))
    model = algorithm.build_model(model_spec)
    test_round = eval_subset(test, eval_samples, seed)
    history = []
    for rnd in tqdm(range(1, num_rounds + 1), desc=f"{algorithm_name} epochs", unit="round", leave=False):
        t0 = time.perf_counter()
        cfg = {**train_cfg, "lr": lr_at_round(float(train_cfg.get("lr", 1e-3)), rnd, num_rounds, lr_schedule)}
        _, metrics = algorithm.client_update(model, train, algorithm.modalities, cfg, derive_seed(seed, rnd, 0), rnd)
        scores = algorithm.evaluate(model, test_round, cfg)
        history.append({"round": rnd, "train_loss": metrics["train_loss"], "lr": cfg["lr"],
                        **{f"test_{k}": v for k, v in scores.items() if isinstance(v, (int, float)) and k != "num_samples"},
                        "bytes_down": 0, "bytes_up": 0, "seconds": time.perf_counter() - t0})
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, history


def train_local(partitions: dict[int, dict[str, Any]], test: dict[str, Any], algorithm_name: str,
                model_spec: dict[str, Any], train_cfg: dict[str, Any], num_rounds: int, seed: int,
                lr_schedule: str = "cosine") -> tuple[list[dict[str, Any]], dict[int, dict[str, torch.Tensor]]]:
    """Each client trains alone for as long as a federated run lasts; scored on the whole test set
    with the modalities it holds. Returns per-client results and states."""
    algorithm = get_algorithm(algorithm_name)
    results, states = [], {}
    for cid, data in tqdm(sorted(partitions.items()), desc="local clients", unit="client", leave=False):
        modalities = tuple(data["modalities"])
        torch.manual_seed(derive_seed(seed, 0))  # every client starts from the same initialisation
        model = algorithm.build_model(model_spec)
        t0 = time.perf_counter()
        for rnd in range(1, num_rounds + 1):
            cfg = {**train_cfg, "lr": lr_at_round(float(train_cfg.get("lr", 1e-3)), rnd, num_rounds, lr_schedule)}
            _, metrics = algorithm.client_update(model, data, modalities, cfg, derive_seed(seed, rnd, cid), rnd)
        scores = algorithm.evaluate(model, test, train_cfg, algorithm.usable_modalities(modalities))
        results.append({"client_id": cid, "modalities": list(modalities), "num_samples": int(len(data["labels"])),
                        "train_loss": metrics["train_loss"], "test_oa": scores["oa"], "test_aa": scores["aa"],
                        "test_kappa": scores["kappa"], "seconds": time.perf_counter() - t0})
        states[cid] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return results, states


def summarise_local(results: list[dict[str, Any]]) -> dict[str, float]:
    oa = np.array([r["test_oa"] for r in results])
    return {"mean_oa": float(oa.mean()), "worst_oa": float(oa.min()), "best_oa": float(oa.max()),
            "median_client": int(results[int(np.argsort(oa)[len(oa) // 2])]["client_id"])}
