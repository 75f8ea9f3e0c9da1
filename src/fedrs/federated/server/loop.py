"""The run: its start (fresh, or resumed from the last checkpoint), the rounds, each round's history
row and checkpoint, and the passes after the last round."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid
from tqdm.auto import tqdm

from fedrs.feddiff.relay import PartnerRelay
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.checkpoint import load_checkpoint, save_checkpoint
from fedrs.federated.codec import CodecConfig
from fedrs.federated.local import derive_seed
from fedrs.federated.server.aggregators import account_records, check_record_privacy, make_aggregator
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.downlink import Downlink
from fedrs.federated.server.messaging import discover_clients, wait_for_nodes
from fedrs.federated.server.passes import (
    calibration_round,
    check_calibration,
    check_temperature,
    probe_round,
    statistics_round,
    temperature_round,
)
from fedrs.federated.server.protocol import RoundProtocol
from fedrs.federated.server.record import RoundRecord
from fedrs.federated.server.state import RunState, eval_subset
from fedrs.federated.server.steps import (
    accumulate_tail,
    aggregate_round,
    average_tail,
    collect_updates,
    configure_round,
)
from fedrs.federated.server.validation import check_validation, evaluate_round, server_validation
from fedrs.federated.server.watch import FailureWatch, loss_growth

logger = logging.getLogger(__name__)

# the round protocols by the name an algorithm gives (``Algorithm.round_protocol``)
PROTOCOLS: dict[str, type[RoundProtocol]] = {"uniform": RoundProtocol, "partner_relay": PartnerRelay}


class RunInterrupted(RuntimeError):
    """Raised after the checkpoint of ``stop_after_round``: a deliberate, resumable stop."""


def start_run(grid: Grid, cfg: FederatedConfig, validation: dict[str, Any], expected_nodes: int
              ) -> tuple[RunState, int]:
    """The run's state (fresh, or from the checkpoint when resuming) and its first round."""
    algorithm = get_algorithm(cfg.algorithm)
    aggregator = make_aggregator(cfg)  # settings that cannot work fail before any client is asked
    aggregator.check(cfg, algorithm)
    if cfg.calibration is not None:
        check_calibration(cfg, algorithm)
    if cfg.temperature is not None:
        check_temperature(cfg, algorithm)
    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = algorithm.build_model(cfg.model)
    protocol = PROTOCOLS[algorithm.round_protocol]()
    check_record_privacy(cfg, model, relays=isinstance(protocol, PartnerRelay))
    nodes = wait_for_nodes(grid, expected_nodes, cfg.node_wait_timeout)
    clients = discover_clients(grid, nodes, {**cfg.settings(), "round": 0})
    eligible = sorted(c for c, info in clients.items() if algorithm.is_eligible(info["modalities"]))
    if len(eligible) < cfg.min_clients:
        raise RuntimeError(f"{len(eligible)} clients can train {cfg.algorithm}; min_clients is {cfg.min_clients}")
    check_validation(cfg, algorithm, {c: clients[c] for c in eligible})
    downlink = Downlink(CodecConfig.from_dict(cfg.downlink_compression) if cfg.downlink_compression else None)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    run = RunState(cfg, algorithm, aggregator, protocol, model, initial,
                   np.random.default_rng(derive_seed(cfg.seed, 1)), clients, eligible,
                   eval_subset(server_validation(cfg, validation), cfg.eval_samples, cfg.seed), downlink)
    return run, resume(run)


def resume(run: RunState) -> int:
    """The round to start with: 1, or the one after the checkpoint's (whose state then replaces the fresh one)."""
    cfg = run.cfg
    checkpoint = load_checkpoint(cfg.checkpoint_dir) if (cfg.checkpoint_dir and cfg.resume) else None
    if checkpoint is None:
        return 1
    if checkpoint["config_digest"] != cfg.digest():
        raise RuntimeError(
            f"the checkpoint in {cfg.checkpoint_dir} was made with other settings; remove it or set resume: false"
        )
    run.global_state, run.history, run.traffic = checkpoint["state"], checkpoint["history"], checkpoint["traffic"]
    run.rng.bit_generator.state = checkpoint["rng"]
    run.tail, run.tail_rounds = checkpoint.get("tail"), int(checkpoint.get("tail_rounds", 0))
    run.privacy_releases = list(checkpoint.get("privacy_releases", []))
    run.record_releases = {int(c): list(r) for c, r in checkpoint.get("record_releases", {}).items()}
    logger.info("Resuming %s from the checkpoint of round %d", cfg.algorithm, checkpoint["round"])
    return int(checkpoint["round"]) + 1


def run_round(grid: Grid, run: RunState, rnd: int) -> RoundRecord:
    record = configure_round(run, rnd)
    run.protocol.before_updates(grid, run, record)
    collect_updates(grid, run, record)
    account_records(run, record)
    aggregate_round(run, record)
    accumulate_tail(run, rnd)
    if rnd == run.cfg.num_rounds:
        average_tail(run)
        statistics_round(grid, run, record)
        calibration_round(grid, run, record)
        temperature_round(grid, run, record)
    if run.cfg.validation_due(rnd):
        evaluate_round(grid, run, record)
    probe_round(grid, run, record)
    return record


def record_round(run: RunState, record: RoundRecord) -> dict[str, Any]:
    """The round's history row and traffic, the loss-trend warning, and the checkpoint."""
    cfg = run.cfg
    row = record.row()
    run.history.append(row)
    run.traffic.extend(record.traffic)
    grown = loss_growth(run.history, cfg.loss_growth_rounds)
    row["loss_growing_rounds"] = grown
    scored = [r for r in run.history if r.get("val_loss") is not None]
    if scored:  # a classifier's validation loss (the DDPMs' rounds have their own measures)
        row["val_loss_growing_rounds"] = loss_growth(scored, cfg.loss_growth_rounds, key="val_loss")
    if grown:
        # the logged training loss is the clients' mean over their local steps; the global model's own
        # validation loss over the same rounds tells a creeping mean from a model that diverges
        span = [r.get("val_loss") for r in (run.history[-grown - 1], row)]
        logger.warning("%s: the training loss has grown for %d rounds in a row (%.4g → %.4g; the global model's "
                       "validation loss %s); a federated loss that climbs round after round is a divergence until "
                       "shown otherwise", cfg.algorithm, grown, run.history[-grown - 1]["train_loss"],
                       row["train_loss"], "not scored" if None in span else f"{span[0]:.4g} → {span[1]:.4g}")
    if row.get("val_loss_growing_rounds"):
        n = row["val_loss_growing_rounds"]
        logger.warning("%s: the global model's validation loss has grown over its last %d scored rounds (%.4g → "
                       "%.4g): overfitting or divergence", cfg.algorithm, n, scored[-n - 1]["val_loss"],
                       row["val_loss"])
    headline = next(iter(record.scores.items()), ("score", float("nan")))
    logger.info("%s round %d/%d: %d/%d updates used (%d failed, %d dropped, %d rejected), train loss %s, "
                "validation %s %.4f",
                cfg.algorithm, record.round, cfg.num_rounds, len(record.accepted), len(record.sampled),
                len(record.failed), len(record.dropped), len(record.rejected),
                "–" if row["train_loss"] is None else f"{row['train_loss']:.4f}", *headline)
    if cfg.checkpoint_dir:
        save_checkpoint(cfg.checkpoint_dir, {
            "round": record.round, "state": run.global_state, "rng": run.rng.bit_generator.state,
            "history": run.history, "traffic": run.traffic, "tail": run.tail, "tail_rounds": run.tail_rounds,
            "privacy_releases": run.privacy_releases, "record_releases": run.record_releases,
            "config_digest": cfg.digest()})
    return row


def run_rounds(grid: Grid, cfg: FederatedConfig, validation: dict[str, Any], expected_nodes: int,
               on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Drive ``cfg.num_rounds`` rounds over ``grid``; returns state, history, traffic and clients.
    ``on_round`` sees each round's history row (the deployment engine reports progress with it)."""
    run, start_round = start_run(grid, cfg, validation, expected_nodes)
    watch = FailureWatch(cfg.failure_tolerance, run.clients)
    rounds = tqdm(range(start_round, cfg.num_rounds + 1), desc=f"{cfg.algorithm} rounds", unit="round",
                  initial=start_round - 1, total=cfg.num_rounds, leave=False)
    for rnd in rounds:
        record = run_round(grid, run, rnd)
        row = record_round(run, record)
        headline = next(iter(record.scores.items()), ("score", float("nan")))
        rounds.set_postfix({headline[0]: f"{headline[1]:.3f}", "loss": row["train_loss"]})
        watch.observe(record)
        if on_round is not None:
            on_round({**row, "num_rounds": cfg.num_rounds})
        if cfg.stop_after_round == rnd and rnd < cfg.num_rounds:
            raise RunInterrupted(f"stopped after round {rnd} as requested (stop_after_round); resume to continue")
    rounds.close()
    return {
        "state": run.global_state,
        "history": run.history,
        "traffic": run.traffic,
        "clients": {str(c): {"modalities": list(i["modalities"]), "num_samples": i["num_samples"]}
                    for c, i in run.clients.items()},
    }
