"""The two reference points that need no federation: centralized (all pixels pooled — the upper
bound) and local (each client alone). Same model, local update and scoring as the federated runs,
and the same round structure (``num_rounds`` × ``epochs``), so their curves line up."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fedrs.federated.algorithm_base import ClassifierAlgorithm
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.local import CrossEntropyTally, derive_seed, lr_at_round
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.passes import check_temperature
from fedrs.federated.server.state import eval_subset
from fedrs.federated.server.watch import loss_growth
from fedrs.federated.temperature import TemperatureConfig, apply_temperature


def train_centralized(train: dict[str, Any], validation: dict[str, Any], cfg: FederatedConfig
                      ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """``cfg.num_rounds`` local updates of one client holding every training pixel."""
    algorithm = get_algorithm(cfg.algorithm)
    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = algorithm.build_model(cfg.model)
    validation_round = eval_subset(validation, cfg.eval_samples, cfg.seed)
    history: list[dict[str, Any]] = []
    base_lr = float(cfg.train.get("lr", 1e-3))
    carry: dict[str, Any] = {}  # e.g. the optimiser's state, with keep_optimizer_state
    for rnd in tqdm(range(1, cfg.num_rounds + 1), desc=f"{cfg.algorithm} epochs", unit="round", leave=False):
        t0 = time.perf_counter()
        train_cfg = {**cfg.train, "lr": lr_at_round(base_lr, rnd, cfg.num_rounds, cfg.lr_schedule)}
        _, metrics = algorithm.client_update(model, train, algorithm.modalities, train_cfg,
                                             derive_seed(cfg.seed, rnd, 0), rnd, carry=carry)
        scores = algorithm.evaluate(model, validation_round, train_cfg)
        history.append(
            {
                "round": rnd,
                "train_loss": metrics["train_loss"],
                "lr": train_cfg["lr"],
                **{f"val_{k}": v for k, v in scores.items() if isinstance(v, int | float) and k != "num_samples"},
                "bytes_down": 0,
                "bytes_up": 0,
                "seconds": time.perf_counter() - t0,
            }
        )
        history[-1]["loss_growing_rounds"] = loss_growth(history, cfg.loss_growth_rounds)
        if "val_loss" in history[-1]:  # the model's own validation loss, flagged as the federated runs' is
            history[-1]["val_loss_growing_rounds"] = loss_growth(history, cfg.loss_growth_rounds, key="val_loss")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if cfg.temperature is not None and history:
        centralized_temperature(algorithm, model, state, validation_round, cfg, history[-1])
    return state, history


def centralized_temperature(algorithm: Any, model: torch.nn.Module, state: dict[str, torch.Tensor],
                            validation: dict[str, Any], cfg: FederatedConfig, row: dict[str, Any]) -> None:
    """Temperature scaling as the federated runs' last pass does it, on the validation pixels held
    here: ``state``'s last layer divided by the fitted T, and ``row`` (the last round's) rescored."""
    check_temperature(cfg, algorithm)  # the federated runs' requirements: a last layer to divide
    assert isinstance(algorithm, ClassifierAlgorithm)
    grid = TemperatureConfig.from_dict(cfg.temperature).grid()
    tally = CrossEntropyTally(np.asarray(validation["labels"]), grid)
    algorithm.score(model, validation, cfg.train, algorithm.modalities, tally=tally)
    before = {k: row[k] for k in ("val_oa", "val_aa", "val_kappa", "val_loss") if k in row}
    fitted = apply_temperature(state, algorithm.require_calibration_layer(), grid, tally.by_temperature / tally.count)
    if not fitted:
        return
    model.load_state_dict(state)
    scores = algorithm.evaluate(model, validation, cfg.train)
    row.update({f"{k}_before_temperature": v for k, v in before.items()}, **fitted,
               **{f"val_{k}": v for k, v in scores.items() if isinstance(v, int | float) and k != "num_samples"})


def train_local(
    partitions: dict[int, dict[str, Any]], validation: dict[str, Any], cfg: FederatedConfig
) -> tuple[list[dict[str, Any]], dict[int, dict[str, torch.Tensor]]]:
    """Each client trains alone for as long as a federated run lasts; scored on the whole validation split
    with the modalities it holds. Returns per-client results and states."""
    algorithm = get_algorithm(cfg.algorithm)
    results, states = [], {}
    base_lr = float(cfg.train.get("lr", 1e-3))
    for cid, data in tqdm(sorted(partitions.items()), desc="local clients", unit="client", leave=False):
        modalities = tuple(data["modalities"])
        torch.manual_seed(derive_seed(cfg.seed, 0))  # every client starts from the same initialisation
        model = algorithm.build_model(cfg.model)
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        for rnd in range(1, cfg.num_rounds + 1):
            train_cfg = {**cfg.train, "lr": lr_at_round(base_lr, rnd, cfg.num_rounds, cfg.lr_schedule)}
            _, metrics = algorithm.client_update(
                model, data, modalities, train_cfg, derive_seed(cfg.seed, rnd, cid), rnd
            )
        usable = tuple(m for m in algorithm.modalities if m in modalities)
        scores = algorithm.evaluate(model, validation, cfg.train, usable)
        results.append(
            {
                "client_id": cid,
                "modalities": list(modalities),
                "num_samples": int(len(data["labels"])),
                "train_loss": metrics["train_loss"],
                "val_oa": scores["oa"],
                "val_aa": scores["aa"],
                "val_kappa": scores["kappa"],
                "seconds": time.perf_counter() - t0,
            }
        )
        states[cid] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return results, states


def summarise_local(results: list[dict[str, Any]]) -> dict[str, float]:
    oa = np.array([r["val_oa"] for r in results])
    return {
        "mean_oa": float(oa.mean()),
        "worst_oa": float(oa.min()),
        "best_oa": float(oa.max()),
        "median_client": int(results[int(np.argsort(oa)[len(oa) // 2])]["client_id"]),
    }
