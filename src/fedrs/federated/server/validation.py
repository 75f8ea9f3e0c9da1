"""Where a round's validation scores come from (``FederatedConfig.validation``).

``server``: the server scores the global model on its own validation pixels. ``clients``: no
validation pixel leaves its organisation — every client that can score the whole model runs the
global weights (the last round's exactly, earlier rounds' as the downlink's codec delivers them)
over its own validation pixels (FedDiff's clients with their site partner's outputs
of those pixels, relayed uncoded) and sends only its confusion counts, into one more SecAgg+ sum
where the run aggregates securely; the server scores their sum. The pass does not touch training:
the clients score the exact global weights and keep training from the copy they hold
(``Downlink.encode(aside=True)``; client side, ``fedrs.federated.client_app``)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid

from fedrs.federated.algorithm_base import ClassifierAlgorithm
from fedrs.federated.local import CrossEntropyTally
from fedrs.federated.secure import SecureAggregationConfig
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.record import RoundRecord, merge_pass
from fedrs.federated.server.state import RunState
from fedrs.federated.server.steps import collect_updates, encode_downloads
from fedrs.metrics import CONFUSION, CROSS_ENTROPY, CROSS_ENTROPY_BY_TEMPERATURE, confusion_report

logger = logging.getLogger(__name__)

SCORES = ("oa", "aa", "kappa", "per_class_spread")  # and the cross-entropy ("loss") where the clients send it
SERVER_VALIDATION_KEYS = ("num_classes", "class_names")  # what the server knows of validation on the clients


def check_validation(cfg: FederatedConfig, algorithm: object, clients: dict[int, dict]) -> None:
    """``validation: clients`` needs a classifier, no client-level DP nor exchange protection (their
    accountants count training's releases only), and clients holding validation pixels."""
    if cfg.validation != "clients":
        return
    if not isinstance(algorithm, ClassifierAlgorithm):
        raise ValueError(f"validation: clients scores classifiers by their confusion counts; {cfg.algorithm} is "
                         "not one (set validation: server)")
    if cfg.exchange_privacy:
        raise ValueError("validation: clients with exchange_privacy: the partners' outputs of the validation pixels "
                         "would be relayed too, releases the privacy accountant does not count; set validation: "
                         "server")
    if cfg.privacy:
        raise ValueError("validation: clients with privacy (client-level DP): each organisation's counts would be "
                         "releases of unbounded sensitivity that the accountant does not count; set validation: "
                         "server")
    if not scorers(algorithm, clients, list(clients)):
        raise ValueError(f"validation: clients, but none of the {len(clients)} clients holds validation pixels it "
                         "can score the whole model on (partitions made without validation pixels, or no client "
                         "holds every modality); re-run the partition or set validation: server")


def scorers(algorithm: ClassifierAlgorithm, clients: dict[int, dict], eligible: list[int]) -> list[int]:
    return [c for c in eligible if clients[c].get("validation_samples", 0)
            and algorithm.scores_whole_model(clients[c]["modalities"])]


def server_validation(cfg: FederatedConfig, validation: dict[str, Any]) -> dict[str, Any]:
    """What the server holds of the validation split: all of it (``validation: server``), or — the
    clients scoring their own — its class names only."""
    if cfg.validation != "clients":
        return validation
    return {k: validation[k] for k in SERVER_VALIDATION_KEYS if k in validation}


def evaluate_round(grid: Grid, run: RunState, record: RoundRecord, temperatures: tuple[float, ...] = ()
                   ) -> np.ndarray | None:
    """The round's validation scores of the global model (``record.scores``); with ``temperatures``
    also the mean cross-entropy of its logits divided by each, over every scored pixel (what
    temperature scaling fits; None where it did not arrive)."""
    if run.cfg.validation == "clients":
        return client_validation(grid, run, record, temperatures)
    run.model.load_state_dict(run.global_state)
    if temperatures:
        assert isinstance(run.algorithm, ClassifierAlgorithm)
        tally = CrossEntropyTally(np.asarray(run.validation["labels"]), temperatures)
        report = run.algorithm.score(run.model, run.validation, record.settings["train"], run.algorithm.modalities,
                                     tally=tally)
    else:
        report = run.algorithm.evaluate(run.model, run.validation, record.settings["train"])
    # the history's scores are those the clients' counts give too (the ECE: the test report's)
    record.scores = {k: float(v) for k, v in report.items()
                     if isinstance(v, int | float) and k not in ("num_samples", "ece")}
    return tally.by_temperature / tally.count if temperatures else None


def state_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def client_validation(grid: Grid, run: RunState, record: RoundRecord, temperatures: tuple[float, ...] = ()
                      ) -> np.ndarray | None:
    assert isinstance(run.algorithm, ClassifierAlgorithm)
    # the last round's models exactly (what settings are chosen on); a round before it through the downlink's
    # codec, as the clients would receive it to train (every weight changes each round: exact, the scoring
    # would cost about twice what training sends)
    exact = record.round == run.cfg.num_rounds
    digest = f"{state_digest(run.global_state)}:{exact}"
    if run.last_scored is not None and run.last_scored[0] == digest and not temperatures:
        # the same model scored again (a round that aggregated nothing, a pass that changed nothing): the
        # same scores, and no second sum whose senders could differ by one organisation — whose counts
        # the difference of the two sums would then be
        record.scores, record.validation = dict(run.last_scored[1]), dict(run.last_scored[2])
        return None
    # uncoded exchange: a validation pixel is scored as the assembled model scores it, without the codec's error
    settings = {**record.settings, "split": "validation", "exchange_compression": None}
    if temperatures:
        settings["temperatures"] = list(temperatures)
    asked = scorers(run.algorithm, run.clients, run.eligible)
    sub = RoundRecord(record.round, record.lr, settings, asked, "validation")
    encode_downloads(run, sub, exact=exact, aside=True, payload="validation weights")
    run.protocol.before_updates(grid, run, sub)
    sub.sampled = run.protocol.pixel_senders(run, sub)  # each validation pixel counted once
    # the secure sum's public scale: the most validation pixels any sender holds (their counts are public)
    scale = max((int(run.clients[c]["validation_samples"]) for c in sub.sampled), default=1)
    sub.settings["validation_scale"] = scale
    collect_updates(grid, run, sub)
    counts = confusion_received(run, sub)
    for entry in sub.traffic:  # the relayed outputs of the validation pixels (the counts: merge_pass)
        if entry["payload"] == "features":
            entry["payload"] = "validation features"
    merge_pass(record, sub, "validation")
    senders = len(sub.secure_from) if run.cfg.secure else len(sub.updates)
    pixels = 0 if counts is None else int(counts.sum())
    expected = expected_pixels(run, asked)
    record.validation = {"clients": float(senders), "pixels": float(pixels)}
    if not pixels:
        logger.warning("%s round %d: no client's validation counts arrived; the round is not scored",
                       run.cfg.algorithm, record.round)
        record.scores = {}
        return None
    if pixels < expected:
        logger.warning("%s round %d: validation scored on %d of the clients' %d validation pixels (a scorer or its "
                       "partner failed)", run.cfg.algorithm, record.round, pixels, expected)
    assert counts is not None
    report = confusion_report(counts, list(run.validation.get("class_names") or []) or None)
    record.scores = {k: float(report[k]) for k in SCORES}
    loss = cross_entropy_received(sub, pixels)
    if loss is not None:
        record.scores["loss"] = loss
    run.last_scored = (digest, dict(record.scores), dict(record.validation))
    curve = loss_curve_received(sub, len(temperatures)) if temperatures else None
    return None if curve is None else curve / pixels


def loss_curve_received(sub: RoundRecord, points: int) -> np.ndarray | None:
    """The senders' summed cross-entropy at each temperature, added (None unless every sender of
    counts sent one of the asked length)."""
    senders = [u.state for u in sub.updates if CONFUSION in u.state]
    curves = [state.get(CROSS_ENTROPY_BY_TEMPERATURE) for state in senders]
    if not curves or any(c is None or c.numel() != points for c in curves):
        return None
    return torch.stack([c.double().flatten() for c in curves if c is not None]).sum(0).numpy()


def expected_pixels(run: RunState, asked: list[int]) -> int:
    """The validation pixels the scorers hold, each once (a site's two organisations hold the same)."""
    held: dict[Any, int] = {}
    for cid in asked:
        site = run.clients[cid].get("site", -1)
        held[("site", site) if site is not None and site >= 0 else ("client", cid)] = int(
            run.clients[cid]["validation_samples"])
    return sum(held.values())


def cross_entropy_received(sub: RoundRecord, pixels: int) -> float | None:
    """The global model's mean cross-entropy over the scored pixels, from the senders' sums (none
    under SecAgg+, whose clients keep their loss home; none if a sender's counts came without it)."""
    senders = [u.state for u in sub.updates if CONFUSION in u.state]
    if not senders or any(CROSS_ENTROPY not in state for state in senders):
        return None
    return sum(float(state[CROSS_ENTROPY].double().sum()) for state in senders) / pixels


def confusion_received(run: RunState, sub: RoundRecord) -> np.ndarray | None:
    """The sum of the senders' confusion counts: added here, or — under SecAgg+ — their secure sum,
    scaled back by the public pixel bound and rounded to counts."""
    if run.cfg.secure:
        if CONFUSION not in sub.secure_means:
            return None
        members, scale = sub.secure_members[CONFUSION], int(sub.settings["validation_scale"])
        # SecAgg+ quantises each share to 2·clipping_range / quantization_range; rounding recovers whole
        # counts while the members' summed quantisation error stays below half a pixel
        secure = SecureAggregationConfig.from_dict(run.cfg.secure_aggregation or {})
        error = members * scale * secure.clipping_range / secure.quantization_range
        if error >= 0.5:
            logger.warning("round %d: the secure sum of %d scorers' counts (up to %d pixels each) may be off by up "
                           "to %.1f pixels per cell", sub.round, members, scale, error)
        total = sub.secure_means[CONFUSION] * members * scale
        return np.rint(total.numpy()).clip(min=0).astype(np.int64)
    parts = [u.state[CONFUSION] for u in sub.updates if CONFUSION in u.state]
    if not parts:
        return None
    return np.rint(torch.stack(parts).double().sum(0).numpy()).astype(np.int64)
