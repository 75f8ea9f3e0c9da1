"""How a round's replies become the new global state — one ``Aggregator``, chosen once per run:

- ``PlainAggregator``: decode each update (through the codec when uploads are coded), reject
  non-finite or outlying ones, the algorithm's own (modality-aware) weighted mean;
- ``PrivateAggregator``: client-level DP — clip, equal weights, Gaussian noise, the accountant;
  nothing is screened by norm (clipping bounds every update; screening would leak who was large);
- ``SecureAggregator``: Flower's SecAgg+, one secure sum per group of tensors held by the same
  clients; the server sees no single update, only the group means — with ``privacy`` the clients
  clip and the server noises each mean.

The round steps and the passes after the last round call the same four methods, so none of them
asks which protection is on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import compute_stdv

from fedrs.federated.aggregation import ClientUpdate, screen_updates
from fedrs.federated.algorithm_base import Algorithm
from fedrs.federated.calibration import STATISTICS, CalibrationConfig
from fedrs.federated.local import TrainConfig, derive_seed, norm_statistic_names
from fedrs.federated.noise import Noise, gaussian, noise_generator
from fedrs.federated.privacy import DETERMINISTIC, PrivacyConfig, epsilon_spent, private_aggregate
from fedrs.federated.record_privacy import RecordPrivacy, refuse_batch_norm, sampling_rate, steps_per_round
from fedrs.federated.secure import (
    RAW,
    RELATIVE,
    MeteredGrid,
    SecureAggregationConfig,
    apply_means,
    is_statistic,
    secure_groups,
    secure_mean,
    statistics_units,
)
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.record import RoundRecord
from fedrs.federated.server.state import RunState
from fedrs.federated.wire import unpack_update
from fedrs.metrics import CONFUSION

logger = logging.getLogger(__name__)
WEIGHTINGS = ("samples", "equal")


class PlainAggregator:
    """The algorithm's weighted mean of the decoded, screened updates."""

    def check(self, cfg: FederatedConfig, algorithm: Algorithm) -> None:
        """This aggregator's requirements, before the first round."""
        if cfg.weighting not in WEIGHTINGS:
            raise ValueError(f"federated.weighting is {cfg.weighting!r}; expected samples or equal")

    def update_from_reply(self, run: RunState, record: RoundRecord, cid: int, reply: Message) -> ClientUpdate:
        metrics = dict(reply.content.metric_records["metrics"])
        arrays, codec = reply.content.array_records["arrays"], reply.content.config_records["codec"]
        # class statistics and confusion counts: dense
        coded = run.cfg.compression and record.operation not in ("calibration", "probe", "validation")
        state = (unpack_update(arrays, codec, record.downloads[cid].decoded) if coded
                 else dict(arrays.to_torch_state_dict()))
        info = run.clients[cid]
        return ClientUpdate(cid, state, info["num_samples"], info["modalities"], metrics)

    def after_replies(self, grid: Grid, run: RunState, record: RoundRecord) -> None:
        """Work that needs every reply of the round (the secure sums)."""

    def screen(self, run: RunState, record: RoundRecord, outliers: bool = True
               ) -> tuple[list[ClientUpdate], list[tuple[int, str]]]:
        """(accepted, rejected with reasons); ``outliers``: also by norm (not in the passes)."""
        if not outliers:
            return screen_updates(record.updates, run.global_state, float("inf"))
        return screen_updates(record.updates, run.global_state, run.cfg.outlier_factor, run.cfg.max_update_norm)

    def ready(self, record: RoundRecord) -> bool:
        return True

    def apply(self, run: RunState, source: RoundRecord, target: RoundRecord, updates: list[ClientUpdate],
              sampling_rate: float) -> None:
        """The new global state from ``updates`` (of ``source``); ``target`` records the release."""
        if run.cfg.weighting == "equal":  # each client once, whatever its pixel count (balances class-disjoint sites)
            updates = [replace(u, num_samples=1) for u in updates]
        run.global_state = run.algorithm.aggregate(run.global_state, updates)


class PrivateAggregator(PlainAggregator):
    """Client-level DP (``fedrs.federated.privacy``): clipped updates, equal weights, noise."""

    def check(self, cfg: FederatedConfig, algorithm: Algorithm) -> None:
        PrivacyConfig.from_dict(cfg.privacy or {})  # a bad privacy block fails before the first round
        super().check(cfg, algorithm)

    def screen(self, run: RunState, record: RoundRecord, outliers: bool = True
               ) -> tuple[list[ClientUpdate], list[tuple[int, str]]]:
        return screen_updates(record.updates, run.global_state, float("inf"), None)

    def apply(self, run: RunState, source: RoundRecord, target: RoundRecord, updates: list[ClientUpdate],
              sampling_rate: float) -> None:
        def aggregate(privacy: PrivacyConfig, noise: Noise) -> dict[str, Any]:
            run.global_state, report = private_aggregate(run.global_state, updates, run.algorithm.owner, privacy,
                                                         noise)
            return report

        private_release(run, target, sampling_rate, aggregate)


class SecureAggregator(PlainAggregator):
    """Flower's SecAgg+ (``fedrs.federated.secure``): updates stay on the clients until the sums."""

    def check(self, cfg: FederatedConfig, algorithm: Algorithm) -> None:
        SecureAggregationConfig.from_dict(cfg.secure_aggregation or {})
        if type(algorithm).aggregate is not Algorithm.aggregate:
            raise ValueError(f"secure_aggregation: {cfg.algorithm} does not aggregate by (modality-aware) weighted "
                             "means, the only aggregate a secure sum gives")
        if cfg.compression:
            raise ValueError("secure_aggregation with compression: uploads are summed as masked integers and cannot "
                             "be low-rank coded; set compression: null (downlink_compression may stay)")
        if cfg.privacy and PrivacyConfig.from_dict(cfg.privacy).clipping != "client":
            raise ValueError("secure_aggregation with privacy.clipping: server — the server never holds a single "
                             "update to clip; set privacy.clipping: client")
        super().check(cfg, algorithm)

    def update_from_reply(self, run: RunState, record: RoundRecord, cid: int, reply: Message) -> ClientUpdate:
        info = run.clients[cid]
        return ClientUpdate(cid, {}, info["num_samples"], info["modalities"],
                            dict(reply.content.metric_records["metrics"]))

    def after_replies(self, grid: Grid, run: RunState, record: RoundRecord) -> None:
        secure_sums(grid, run, record)

    def screen(self, run: RunState, record: RoundRecord, outliers: bool = True
               ) -> tuple[list[ClientUpdate], list[tuple[int, str]]]:
        # the server sees no single update: nothing to screen (a client refuses to enter a non-finite one)
        return [u for u in record.updates if u.client_id in record.secure_from], []

    def ready(self, record: RoundRecord) -> bool:
        return bool(record.secure_means)

    def apply(self, run: RunState, source: RoundRecord, target: RoundRecord, updates: list[ClientUpdate],
              sampling_rate: float) -> None:
        """The global state moved by the secure means of ``source`` — with DP, each group's mean
        noised with σ·C/n_g on the server (the clients clipped their own updates)."""
        means = dict(source.secure_means)

        def noise_means(privacy: PrivacyConfig, noise: Noise) -> dict[str, Any]:
            stds = set()
            for name in sorted(means):  # the sorted order fixes the noise each tensor draws
                std = compute_stdv(privacy.noise_multiplier, privacy.clipping_norm, source.secure_members[name])
                stds.add(std)
                means[name] = means[name] + gaussian(means[name].shape, noise) * std
            norms = [float(u.metrics["update_norm"]) for u in source.updates if "update_norm" in u.metrics]
            return {"update_norms": norms or [float("nan")], "clipped": sum(n > privacy.clipping_norm for n in norms),
                    "noise_std_max": max(stds, default=0.0), "noise_std_min": min(stds, default=0.0)}

        if run.cfg.privacy:
            private_release(run, target, sampling_rate, noise_means)
        statistics = statistics_units(bool(run.cfg.privacy))
        for name in means:  # anchored where the clients started (as the plain mean of their states is)
            if statistics == RAW or not is_statistic(name):
                means[name] = means[name] + downloads_mean(source, name) - run.global_state[name].double()
        run.global_state = apply_means(run.global_state, means, pooled_variances=not run.cfg.privacy,
                                       statistics=statistics)


def downloads_mean(record: RoundRecord, name: str) -> torch.Tensor:
    """The weighted mean, over the clients in ``name``'s secure sum, of the value each of them
    started from: its decoded download, which the server encoded and knows bit for bit.

    Why: a client's contribution is its change against what it received; with a compressed downlink
    that differs from the exact global weights by the codec's error, and adding the changes to the
    exact weights instead let that error grow round after round (Houston FedDiff under SecAgg+: loss
    0.65 → 2.49). Anchored here, the secure aggregate is the plain one, the mean of the clients' states."""
    weights = record.secure_weights[name]
    total = sum(weights.values())
    return torch.stack([w / total * record.downloads[c].decoded[name].double() for c, w in weights.items()]).sum(0)


Aggregator = PlainAggregator


def make_aggregator(cfg: FederatedConfig) -> PlainAggregator:
    """The run's aggregator: SecAgg+ (with DP noise when ``privacy`` is set too), DP, or plain."""
    if cfg.secure:
        return SecureAggregator()
    return PrivateAggregator() if cfg.privacy else PlainAggregator()


def private_release(run: RunState, record: RoundRecord, sampling_rate: float,
                    release: Callable[[PrivacyConfig, Noise], dict[str, Any]]) -> None:
    """One DP release: ``release`` draws its noise from a generator only the server knows
    (``noise_generator``: the OS's CSPRNG) and reports what it clipped and added; the accountant
    counts it and the round's record carries ε so far — none with deterministic (test) noise."""
    assert run.cfg.privacy is not None
    privacy = PrivacyConfig.from_dict(run.cfg.privacy)
    seeded = derive_seed(run.cfg.seed, 9_001, record.round, len(run.privacy_releases))
    report = release(privacy, noise_generator(seeded if privacy.deterministic_noise else None))
    # the noise is σ·C per sum; one unit of privacy (the round protocol's) moves the sums by up to
    # sensitivity·C, so for that unit the release is the Gaussian mechanism with σ / sensitivity
    run.privacy_releases.append((privacy.noise_multiplier / run.protocol.sensitivity, sampling_rate))
    epsilon = epsilon_spent(run.privacy_releases, privacy.delta)
    private = np.isfinite(epsilon) and not privacy.deterministic_noise
    record.privacy = {**report, "epsilon": epsilon if private else None,  # None: no guarantee
                      "unit": run.protocol.privacy_unit,
                      **({"noise": DETERMINISTIC} if privacy.deterministic_noise else {})}


def check_record_privacy(cfg: FederatedConfig, model: torch.nn.Module, relays: bool) -> None:
    """Record-level DP's requirements, before the first round: a model without BatchNorm, noised
    class sums for calibration, and in FedDiff noised relayed outputs (a pixel's outputs leave its
    organisation every round)."""
    record = (cfg.train or {}).get("record_privacy")
    if not record:
        return
    privacy = RecordPrivacy.from_dict(record)
    refuse_batch_norm(model)
    if (cfg.calibration is not None and privacy.noise_multiplier > 0
            and not CalibrationConfig.from_dict(cfg.calibration).noise_multiplier > 0):
        raise ValueError("record_privacy with calibration: the class statistics would leave the clients un-noised; "
                         "set calibration.noise_multiplier (> 0) and calibration.feature_clip, or calibration: null")
    if relays and privacy.noise_multiplier > 0 and not (cfg.exchange_privacy or {}).get("noise_multiplier"):
        raise ValueError("record_privacy on FedDiff: every pixel's branch outputs are relayed each round; set "
                         "exchange_privacy with noise_multiplier > 0 (it is counted by the accountant)")


def account_records(run: RunState, record: RoundRecord) -> None:
    """Record-level DP (``fedrs.federated.record_privacy``): every organisation that answered this
    round released E·⌈n/B⌉ DP-SGD steps at (σ, q = B/n), and every one whose branch outputs were
    relayed one Gaussian release of them (σ of ``exchange_privacy``; none: no guarantee). Counted
    from public numbers only (configuration and sample counts); ε per group of organisations whose
    records are the same pixels (``protocol.record_groups``), the round carries the largest."""
    train = record.settings.get("train") or {}
    if not train.get("record_privacy") or record.operation != "train":
        return
    privacy, defaults = RecordPrivacy.from_dict(train["record_privacy"]), TrainConfig()
    batch, epochs = int(train.get("batch_size", defaults.batch_size)), int(train.get("epochs", defaults.epochs))
    exchange = run.cfg.exchange_privacy or {}
    for u in record.updates:
        n = int(run.clients[u.client_id]["num_samples"])
        run.record_releases.setdefault(u.client_id, []).append(
            (privacy.noise_multiplier, sampling_rate(n, batch), steps_per_round(n, batch, epochs)))
    for cid in {t["client_id"] for t in record.traffic if t["direction"] == "up" and t["payload"] == "features"}:
        run.record_releases.setdefault(cid, []).append((float(exchange.get("noise_multiplier", 0.0)), 1.0, 1))
    record.record_privacy = record_budget(run, privacy)


def account_calibration(run: RunState, record: RoundRecord, sub: RoundRecord, cfg: CalibrationConfig) -> None:
    """Record-level DP: every client whose class statistics were received (or entered the secure
    sum) released them once through the Gaussian mechanism with σ of ``calibration`` (one pixel moves
    (count, sum / R, outer / R²) by ≤ √3, the noise is σ·√3); the last round's ε includes them."""
    train = sub.settings.get("train") or {}
    if not train.get("record_privacy"):
        return
    senders = set(sub.secure_from) if run.cfg.secure else {u.client_id for u in sub.updates}
    for cid in sorted(senders):
        run.record_releases.setdefault(cid, []).append((float(cfg.noise_multiplier), 1.0, 1))
    record.record_privacy = record_budget(run, RecordPrivacy.from_dict(train["record_privacy"]))


def record_budget(run: RunState, privacy: RecordPrivacy) -> dict[str, Any]:
    """ε so far for the worst group of organisations whose records are the same pixels, the unit,
    and — with deterministic (test) noise — that there is no guarantee."""
    epsilons = [epsilon_spent([r for c in group for r in run.record_releases.get(c, [])], privacy.delta)
                for group in run.protocol.record_groups(run)]
    epsilon = max(epsilons, default=0.0)
    return {"epsilon": epsilon if np.isfinite(epsilon) and not privacy.deterministic_noise else None,
            "unit": run.protocol.record_unit, **({"noise": DETERMINISTIC} if privacy.deterministic_noise else {})}


def secure_holdings(run: RunState, record: RoundRecord) -> dict[int, list[str]]:
    """Per client, the floating-point tensors it holds a part in (a statistics pass: its BatchNorm
    statistics only) — what its secure sums carry."""
    if record.operation == "calibration":  # every sender holds the same three class statistics
        return {u.client_id: list(STATISTICS) for u in record.updates}
    if record.operation == "validation":  # and every scorer its confusion counts
        return {u.client_id: [CONFUSION] for u in record.updates}
    statistics = norm_statistic_names(run.model) if record.operation == "statistics" else None
    holdings = {}
    for u in record.updates:
        keys = run.algorithm.client_keys(run.model, u.modalities)
        holdings[u.client_id] = [
            k for k in keys if torch.is_floating_point(run.global_state[k])
            and (statistics is None or k in statistics)
            and (run.algorithm.owner(k) is None or run.algorithm.owner(k) in u.modalities)
        ]
    return holdings


def secure_sums(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """One SecAgg+ run per group of tensors held by the same clients: the mean contributions and who
    is in them. A group with fewer than two members cannot be summed securely and keeps its global
    values; a client that fails inside the protocol is dropped from its sums by SecAgg+ itself."""
    cfg, secure = run.cfg, SecureAggregationConfig.from_dict(run.cfg.secure_aggregation or {})
    # DP averages clipped updates with equal weights; class statistics and counts are summed, not averaged
    equal = cfg.weighting == "equal" or bool(cfg.privacy) or record.operation in ("calibration", "validation")
    node_of = {u.client_id: run.clients[u.client_id]["node"] for u in record.updates}
    client_of = {node: cid for cid, node in node_of.items()}
    metered = MeteredGrid(grid)
    groups = secure_groups(secure_holdings(run, record))
    relative = statistics_units(bool(cfg.privacy)) == RELATIVE
    if relative:  # normalisation statistics in RELATIVE units get sums of their own, with their own range
        groups = [(part, members) for names, members in groups
                  for part in (tuple(n for n in names if not is_statistic(n)),
                               tuple(n for n in names if is_statistic(n))) if part]
    statistics_cfg = replace(secure, clipping_range=secure.statistics_range)
    failed = skipped = 0
    for index, (names, members) in enumerate(groups):
        if len(members) < 2:
            skipped += 1
            logger.warning("round %d: %d tensors are held by one client only (%s); a secure sum needs two, so "
                           "they keep their global values", record.round, len(names), members)
            continue
        weights = {node_of[c]: 1 if equal else int(run.clients[c]["num_samples"]) for c in members}
        use = statistics_cfg if relative and is_statistic(names[0]) else secure
        means, nodes = secure_mean(metered, weights, names, record.round, index, use,  # type: ignore[arg-type]
                                   cfg.round_timeout)
        if means is None:
            failed += 1
            logger.warning("round %d: the secure sum of %d tensors over clients %s did not finish; they keep their "
                           "global values", record.round, len(names), list(members))
            continue
        for name, value in means.items():
            record.secure_means[name] = torch.from_numpy(np.asarray(value, dtype=np.float64))
            record.secure_members[name] = len(nodes)
            record.secure_weights[name] = {client_of[n]: float(weights[n]) for n in nodes}
        for node in nodes:
            record.secure_from[client_of[node]] = record.secure_from.get(client_of[node], 0) + 1
        record.secure.setdefault("group_sizes", []).append(len(nodes))
    record.wait += metered.seconds
    record.secure.update({"sums": len(groups) - skipped - failed, "sums_failed": failed, "sums_skipped": skipped,
                          "seconds": record.secure.get("seconds", 0.0) + metered.seconds})
    for node in metered.down.keys() | metered.up.keys():
        record.log_traffic(client_of[node], "down", "secagg", 0, metered.down.get(node, 0))
        record.log_traffic(client_of[node], "up", "secagg", 0, metered.up.get(node, 0))
