"""Where a round's validation scores come from (``FederatedConfig.validation``).

``server``: the server scores the global model on its own validation pixels. ``clients``: no
validation pixel leaves its organisation — every client that can score the whole model runs the
global weights over its own validation pixels (FedDiff's clients with their site partner's outputs
of those pixels, relayed uncoded) and sends only its confusion counts, into one more SecAgg+ sum
where the run aggregates securely; the server scores their sum. The pass does not touch training:
the clients score the exact global weights and keep training from the copy they hold
(``Downlink.encode(aside=True)``; client side, ``fedrs.federated.client_app``)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.serverapp import Grid

from fedrs.federated.algorithm_base import ClassifierAlgorithm
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.record import Download, RoundRecord, merge_pass
from fedrs.federated.server.state import RunState
from fedrs.federated.server.steps import collect_updates
from fedrs.metrics import CONFUSION, confusion_report

logger = logging.getLogger(__name__)

SCORES = ("oa", "aa", "kappa", "per_class_spread")


def check_validation(cfg: FederatedConfig, algorithm: object, clients: dict[int, dict]) -> None:
    """``validation: clients`` needs a classifier, no exchange protection (its accountant counts the
    training pixels' releases only), and clients holding validation pixels."""
    if cfg.validation != "clients":
        return
    if not isinstance(algorithm, ClassifierAlgorithm):
        raise ValueError(f"validation: clients scores classifiers by their confusion counts; {cfg.algorithm} is "
                         "not one (set validation: server)")
    if cfg.exchange_privacy:
        raise ValueError("validation: clients with exchange_privacy: the partners' outputs of the validation pixels "
                         "would be relayed too, releases the privacy accountant does not count; set validation: "
                         "server")
    if not any(scorers(algorithm, clients, list(clients))):
        raise ValueError(f"validation: clients, but none of the {len(clients)} clients holds validation pixels it "
                         "can score the whole model on (partitions made without validation pixels, or no client "
                         "holds every modality); re-run the partition or set validation: server")


def scorers(algorithm: ClassifierAlgorithm, clients: dict[int, dict], eligible: list[int]) -> list[int]:
    return [c for c in eligible if clients[c].get("validation_samples", 0)
            and algorithm.scores_whole_model(clients[c]["modalities"])]


def evaluate_round(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """The round's validation scores of the global model (``record.scores``)."""
    if run.cfg.validation == "clients":
        client_validation(grid, run, record)
        return
    run.model.load_state_dict(run.global_state)
    report = run.algorithm.evaluate(run.model, run.validation, record.settings["train"])
    record.scores = {k: float(v) for k, v in report.items() if isinstance(v, int | float) and k != "num_samples"}


def client_validation(grid: Grid, run: RunState, record: RoundRecord) -> None:
    assert isinstance(run.algorithm, ClassifierAlgorithm)
    # uncoded exchange: a validation pixel is scored as the assembled model scores it, without the codec's error
    settings = {**record.settings, "split": "validation", "exchange_compression": None}
    sub = RoundRecord(record.round, record.lr, settings, scorers(run.algorithm, run.clients, run.eligible),
                      "validation")
    for cid in sub.sampled:
        keys = sorted(run.algorithm.client_keys(run.model, run.clients[cid]["modalities"]))
        content, dense, sent, decoded = run.downlink.encode(cid, {k: run.global_state[k] for k in keys}, sub.round,
                                                            aside=True)
        sub.downloads[cid] = Download(content, dense, sent, decoded)
        sub.log_traffic(cid, "down", "weights", dense, sent)
    run.protocol.before_updates(grid, run, sub)
    sub.sampled = run.protocol.calibration_senders(run, sub)  # each validation pixel counted once
    # the secure sum's public scale: the most validation pixels any sender holds (their counts are public)
    sub.settings["validation_pixels"] = max((int(run.clients[c]["validation_samples"]) for c in sub.sampled),
                                            default=1)
    collect_updates(grid, run, sub)
    counts = confusion_received(run, sub)
    for entry in sub.traffic:  # what scoring on the clients costs, apart from training's traffic: the counts
        up_counts = entry["direction"] == "up" and entry["payload"] == "weights"  # ("validation"), the downloads
        entry["payload"] = "validation" if up_counts else f"validation {entry['payload']}"  # and the relayed outputs
    merge_pass(record, sub, "validation")
    senders = len(sub.secure_from) if run.cfg.secure else len(sub.updates)
    if counts is None or not counts.sum():
        logger.warning("%s round %d: no client's validation counts arrived; the round is not scored",
                       run.cfg.algorithm, record.round)
        record.scores, record.validation = {}, {"clients": float(senders), "pixels": 0.0}
        return
    report = confusion_report(counts, list(run.validation.get("class_names") or []) or None)
    record.scores = {k: float(report[k]) for k in SCORES}
    record.validation = {"clients": float(senders), "pixels": float(counts.sum())}


def confusion_received(run: RunState, sub: RoundRecord) -> np.ndarray | None:
    """The sum of the senders' confusion counts: added here, or — under SecAgg+ — their secure sum,
    scaled back by the public pixel bound and rounded to counts."""
    if run.cfg.secure:
        if CONFUSION not in sub.secure_means:
            return None
        total = sub.secure_means[CONFUSION] * sub.secure_members[CONFUSION] * int(sub.settings["validation_pixels"])
        return np.rint(total.numpy()).clip(min=0).astype(np.int64)
    parts = [u.state[CONFUSION] for u in sub.updates if CONFUSION in u.state]
    if not parts:
        return None
    return np.rint(torch.stack(parts).double().sum(0).numpy()).astype(np.int64)
