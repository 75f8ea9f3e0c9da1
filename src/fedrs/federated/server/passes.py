"""The passes after the last round's aggregation, which count with that round: the BatchNorm
statistics of the final model (``statistics_round``), classifier calibration
(``calibration_round``) and temperature scaling (``temperature_round``)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.serverapp import Grid

from fedrs.feddiff.probe import ProbeConfig, probe_scores
from fedrs.federated.algorithm_base import Algorithm
from fedrs.federated.calibration import (
    STATISTICS,
    CalibrationConfig,
    calibrate_layer,
    class_gaussians,
    pool_statistics,
    secure_scales,
)
from fedrs.federated.local import derive_seed, norm_statistic_names
from fedrs.federated.server.aggregators import account_calibration
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.record import RoundRecord, merge_pass
from fedrs.federated.server.state import RunState
from fedrs.federated.server.steps import collect_updates, encode_downloads
from fedrs.federated.server.validation import evaluate_round
from fedrs.federated.temperature import TemperatureConfig, apply_temperature

logger = logging.getLogger(__name__)


def statistics_round(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """After the last round's aggregation: every eligible client runs the final global model over
    its own pixels without training (FedDiff: with its partner's outputs of that model) and sends
    only its BatchNorm running statistics; the server pools them.

    Why: each client's statistics were gathered with its own local weights, and the average of
    weights is none of them — on the class-disjoint Houston sites the averaged statistics cost
    4 OA points against statistics of the final model."""
    if not (run.cfg.statistics_pass and record.aggregated and norm_statistic_names(run.model)):
        return
    evaluate_round(grid, run, record)  # the gain of the pass, in the history
    record.scores_before_statistics = dict(record.scores)
    for _ in range(run.protocol.statistics_passes):
        statistics_pass_round(grid, run, record)


def statistics_pass_round(grid: Grid, run: RunState, record: RoundRecord) -> None:
    sub = RoundRecord(record.round, record.lr, record.settings, list(run.eligible), "statistics")
    for cid in sub.sampled:  # the statistics must be those of the exact final weights, not of a
        run.downlink.forget(cid)  # compressed copy: the first download of the pass goes dense
    encode_downloads(run, sub)
    run.protocol.before_updates(grid, run, sub)
    collect_updates(grid, run, sub)
    finite, rejected = run.aggregator.screen(run, sub, outliers=False)
    if finite and run.aggregator.ready(sub):
        run.aggregator.apply(run, sub, record, finite, 1.0)
    sub.statistics_from = [u.client_id for u in finite]
    merge_pass(record, sub, "statistics")
    record.rejected.extend(rejected)
    record.statistics_from = sub.statistics_from
    logger.info("%s: BatchNorm statistics of the final model pooled from %d of %d clients",
                run.cfg.algorithm, len(finite), len(sub.sampled))


def calibration_round(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """After the last round (and the statistics pass): every client whose features are those of
    the test pixels runs the final model over its pixels — FedDiff clients with their partner's
    relayed outputs of that model — and sends the per-class count, sum and outer-product sum of the
    last layer's inputs (dense, or into one more SecAgg+ sum; noised under record-level DP, and
    counted); the server pools them and retrains that layer on virtual features
    (``fedrs.federated.calibration``). Its traffic and failures count with the last round."""
    if run.cfg.calibration is None or not record.aggregated:
        return
    cfg = CalibrationConfig.from_dict(run.cfg.calibration)
    layer = run.algorithm.require_calibration_layer()
    evaluate_round(grid, run, record)
    record.scores_before_calibration = dict(record.scores)
    settings = {**record.settings, "calibration": run.cfg.calibration}  # the clients' minimum count per class
    if cfg.dense_exchange:  # the statistics of features as a test pixel's are computed: without the codec's error
        settings["exchange_compression"] = None
    contributors = [c for c in run.eligible if run.algorithm.calibration_contributes(run.clients[c]["modalities"])]
    sub = RoundRecord(record.round, record.lr, settings, contributors, "calibration")
    encode_downloads(run, sub, exact=True)  # the features must be those of the exact final weights
    run.protocol.before_updates(grid, run, sub)
    sub.sampled = run.protocol.pixel_senders(run, sub)
    # the secure sums' public scale: the most pixels any sender holds (sample counts are public)
    sub.settings["calibration_pixels"] = max((int(run.clients[c]["num_samples"]) for c in sub.sampled), default=1)
    collect_updates(grid, run, sub)
    parts = statistics_received(run, sub, cfg)
    merge_pass(record, sub, "calibration")
    account_calibration(run, record, sub, cfg)
    if not parts:
        logger.warning("%s: no class statistics arrived; the last layer is not calibrated", run.cfg.algorithm)
        return
    weight, bias = run.global_state[f"{layer}.weight"], run.global_state[f"{layer}.bias"]
    pooled = pool_statistics(parts)
    senders = float(len(sub.secure_from) if run.cfg.secure else len(parts))
    if not class_gaussians(pooled, cfg):  # a run's training is not thrown away for want of statistics
        logger.warning("%s: no class has %d pooled pixels (clients withhold classes of fewer than %d); the last "
                       "layer is not calibrated", run.cfg.algorithm, max(cfg.min_pixels, 2), cfg.min_client_pixels)
        record.calibration = {"clients": senders, "pixels": float(pooled["count"].sum()), "classes": 0.0}
        record.scores_before_calibration = {}  # nothing was calibrated: no "before" to report
        return
    run.global_state[f"{layer}.weight"], run.global_state[f"{layer}.bias"], report = calibrate_layer(
        weight, bias, pooled, cfg, derive_seed(run.cfg.seed, 7_007, record.round))
    record.calibration = {"clients": senders, "pixels": float(pooled["count"].sum()), **report}
    norms = [float(u.metrics["feature_norm_max"]) for u in sub.updates if "feature_norm_max" in u.metrics]
    if norms:  # only where the statistics travelled in the clear (the feature_clip SecAgg+ and DP would need)
        record.calibration["feature_norm_max"] = max(norms)
    logger.info("%s: the last layer (%s) calibrated on %d virtual features of %d classes from %d clients' "
                "statistics (loss %.3f → %.3f)", run.cfg.algorithm, layer, int(report["virtual_features"]),
                int(report["classes"]), int(senders), report["loss_before"], report["loss_after"])


def statistics_received(run: RunState, sub: RoundRecord, cfg: CalibrationConfig) -> list[dict[str, torch.Tensor]]:
    """The class statistics the server may pool: each sender's (dense), or — under SecAgg+ — only
    their secure sum, scaled back (``secure_scales``)."""
    if not run.cfg.secure:
        return [u.state for u in sub.updates if all(torch.isfinite(v).all() for v in u.state.values())]
    if not all(name in sub.secure_means for name in STATISTICS):
        return []
    assert cfg.feature_clip is not None
    scales = secure_scales(int(sub.settings["calibration_pixels"]), float(cfg.feature_clip))
    return [{name: sub.secure_means[name] * sub.secure_members[name] * scales[name] for name in STATISTICS}]


def check_calibration(cfg: FederatedConfig, algorithm: Algorithm) -> None:
    """Classifier calibration's requirements, before the first round."""
    calibration = CalibrationConfig.from_dict(cfg.calibration)
    algorithm.require_calibration_layer()
    if cfg.privacy:
        raise ValueError("calibration with privacy (client-level DP): one organisation's class statistics have no "
                         "bounded sensitivity at the organisation level; use secure_aggregation, or record-level DP "
                         "(train.record_privacy) with calibration.noise_multiplier, or set calibration: null")
    if cfg.secure and calibration.feature_clip is None:
        raise ValueError("calibration with secure_aggregation needs calibration.feature_clip: the class sums are "
                         "scaled by public bounds to fit SecAgg+'s clipping range (docs/privacy.md)")
    if cfg.exchange_privacy:
        raise ValueError("calibration with exchange_privacy: the class statistics would be those of noised partner "
                         "outputs, which no test pixel sees (and relaying them unprotected would undo the "
                         "protection); set calibration: null")


def temperature_round(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """After the last round, the statistics pass and calibration: the final model scored on the
    validation pixels at every temperature of a grid (the clients send one summed cross-entropy per
    temperature beside their counts), and its last layer divided by the T the summed curve is
    lowest at (``fedrs.federated.temperature``). The predicted classes stay; the probabilities change."""
    if run.cfg.temperature is None or not record.aggregated:
        return
    cfg = TemperatureConfig.from_dict(run.cfg.temperature)
    layer = run.algorithm.require_calibration_layer()
    grid_ = cfg.grid()
    curve = evaluate_round(grid, run, record, grid_)
    if curve is None:
        logger.warning("%s: no validation cross-entropy arrived at the temperatures; the logits are not scaled",
                       run.cfg.algorithm)
        return
    fitted = apply_temperature(run.global_state, layer, grid_, curve)
    if not fitted:
        logger.warning("%s: the validation cross-entropy is not finite at every temperature; the logits are not "
                       "scaled", run.cfg.algorithm)
        return
    record.scores_before_temperature, record.temperature = dict(record.scores), fitted
    temperature = fitted["temperature"]
    if not record.temperature["temperature_inside_grid"]:
        logger.warning("%s: the validation cross-entropy is lowest at the grid's end (T = %.3g); widen "
                       "temperature.lowest / highest", run.cfg.algorithm, temperature)
    logger.info("%s: the logits divided by T = %.3f, fitted on the validation pixels (cross-entropy %.4f at T = 1)",
                run.cfg.algorithm, temperature, record.scores.get("loss", float("nan")))


def check_temperature(cfg: FederatedConfig, algorithm: Algorithm) -> None:
    """Temperature scaling's requirements, before the first round: a last layer to scale, and the
    validation pixels' cross-entropy — which clients keep home under SecAgg+."""
    TemperatureConfig.from_dict(cfg.temperature)
    if algorithm.calibration_layer() is None:
        raise ValueError(f"temperature: {algorithm.name} has no last layer to divide by T; set temperature: null")
    if cfg.validation == "clients" and cfg.secure:  # (client-level DP refuses the clients' scoring itself)
        raise ValueError("temperature with validation: clients under secure_aggregation: each client's "
                         "cross-entropy at every temperature would travel in the clear, outside the secure sum; set "
                         "temperature: null in the algorithm's federated block (feddiff.classifier.federated, "
                         "fedcmi.training.federated: on by default there) or validation: server")


def probe_round(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """Stage 1's linear probe of the new global model (``fedrs.feddiff.probe``): every eligible
    client sends the class statistics of its probe inputs, the server fits the LDA probe per input
    and scores it on the validation pixels; the round's scores gain ``probe_<input>``. Off under
    SecAgg+ and DP (the statistics would travel in the clear)."""
    if run.cfg.probe is None or not record.aggregated:
        return
    cfg = ProbeConfig.from_dict(run.cfg.probe)
    if not cfg.due(record.round, run.cfg.num_rounds):
        return
    if run.cfg.secure or run.cfg.privacy or (record.settings.get("train") or {}).get("record_privacy"):
        logger.info("%s: no linear probe under SecAgg+ or DP", run.cfg.algorithm)
        return
    num_classes = int(run.validation["num_classes"])
    settings = {**record.settings, "probe": run.cfg.probe, "probe_classes": num_classes}
    sub = RoundRecord(record.round, record.lr, settings, list(run.eligible), "probe")
    # the exact global weights: the middle-block features vary by ~1 % of their size from pixel to pixel,
    # less than a compressed download moves them, and the server scores validation features of these weights
    encode_downloads(run, sub, exact=True)
    collect_updates(grid, run, sub)
    parts = [u.state for u in sub.updates if all(torch.isfinite(v).all() for v in u.state.values())]
    merge_pass(record, sub, "probe")
    if not parts:
        logger.warning("%s: no client sent probe statistics", run.cfg.algorithm)
        return
    run.model.load_state_dict(run.global_state)
    validation = run.algorithm.probe_inputs(run.model, run.validation, cfg.timesteps, run.cfg.seed,
                                            record.settings.get("train"))
    scores = probe_scores(pool_statistics(parts, keys=sorted(parts[0])), validation,
                          np.asarray(run.validation["labels"]), num_classes, cfg.ridge)
    record.scores.update({f"probe_{name}": oa for name, oa in scores.items()})
    logger.info("%s round %d: linear probe validation OA %s", run.cfg.algorithm, record.round,
                ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
