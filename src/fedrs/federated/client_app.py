"""The Flower ClientApp every algorithm runs in. It only unpacks messages, loads the client's own
partition and calls the algorithm's plain functions — one handler per operation the server asks
for: ``query`` (which partition it holds), ``query.exchange`` (FedDiff's branch outputs),
``query.features`` (FedDiff's stage 2), ``train`` (a local update, or a SecAgg+ stage),
``query.statistics`` (the BatchNorm statistics of the final model), ``query.calibration`` (class
statistics for classifier calibration), ``query.probe`` (stage 1's linear probe), ``query.validation``
(confusion counts of the global model on the client's own validation pixels). A message whose
settings name ``split: validation`` works on those pixels instead of the training ones.

Which file is "its own": the node config's ``partition-path`` on Flower's deployment engine (each
SuperNode is started pointing at its organisation's file), else ``client_<partition-id>.npz`` in
the ``partition_dir`` the server names (simulation, where node configs carry a partition id).
"""

from __future__ import annotations

import functools
import io
import json
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from fedrs.datasets.npz import NpzDataset
from fedrs.feddiff.features import FeatureSettings, attach_features, compute_features, node_store, received_unets
from fedrs.feddiff.probe import ProbeConfig, probe_statistics
from fedrs.federated.algorithm_base import Algorithm, ClassifierAlgorithm
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.calibration import CalibrationConfig, client_minimum, client_statistics, secure_scales
from fedrs.federated.codec import CodecConfig
from fedrs.federated.local import CrossEntropyTally, derive_seed
from fedrs.federated.noise import noise_generator
from fedrs.federated.privacy import ExchangeProtection, protect_exchange, public_metrics
from fedrs.federated.secure import PROTOCOL_RECORD, held_contribution, hold_update
from fedrs.federated.upload import Outgoing, run_path, upload_path
from fedrs.federated.wire import pack_tensors, payload_bytes, unpack_tensors
from fedrs.metrics import CONFUSION, CROSS_ENTROPY, CROSS_ENTROPY_BY_TEMPERATURE, confusion_matrix
from fedrs.partition import validation_count, validation_view
from fedrs.reproducible import torch_threads

app = ClientApp()
# Client bundles already read by this process: a Ray actor serves several simulated clients in turn,
# so it keeps the most recent ones (bounded in bytes) instead of re-reading a file every round.
_CACHE: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
CACHE_BYTES = 1 << 30


DEFAULT_CLIENT_THREADS = 1  # = the simulation's default num_cpus_per_client


class ClientFailure(RuntimeError):
    """A client's handler failed; the message carries the client's own traceback to the server."""


def threads_of(msg: Message) -> int:
    """The PyTorch thread count the run asks its clients to compute on (SecAgg+'s protocol
    messages carry no settings: the default)."""
    if "config" not in msg.content.config_records:
        return DEFAULT_CLIENT_THREADS
    return int(settings_of(msg).get("client_threads") or DEFAULT_CLIENT_THREADS)


def reports_traceback(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Flower sends the server only ``str(exception)``; re-raise with the traceback in it, so a run
    stopped for a systematic failure shows where in the client it happened."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            with torch_threads(threads_of(msg)):
                return handler(msg, context)
        except Exception as exc:
            node = context.node_config
            raise ClientFailure(
                f"{handler.__name__} on partition {node.get('partition-id', node.get('partition-path', '?'))}:\n"
                f"{traceback.format_exc().rstrip()}"
            ) from exc

    return wrapped


def _bundle_bytes(bundle: dict[str, Any]) -> int:
    return sum(getattr(v, "nbytes", 0) for v in bundle.values())


def partition_path(context: Context, settings: dict[str, Any]) -> Path:
    node = context.node_config
    if "partition-path" in node:
        return Path(str(node["partition-path"]))
    return Path(settings["partition_dir"]) / f"client_{int(node['partition-id']):03d}.npz"


def load_partition(path: Path, extra_dirs: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The client's bundle, merged with its files of the same name in ``extra_dirs`` (e.g. its own
    diffusion features). Read once per process and kept (least recently used out first, at most
    ``CACHE_BYTES``), keyed on paths and modification times so a rewritten file is read again."""
    paths = [path, *(Path(d) / path.name for d in extra_dirs)]
    key = tuple((str(p), p.stat().st_mtime_ns if p.exists() else 0) for p in paths)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    bundle: dict[str, Any] = {}
    for p in paths:
        bundle.update(NpzDataset(str(p)).load())
    _CACHE[key] = bundle
    while len(_CACHE) > 1 and sum(_bundle_bytes(b) for b in _CACHE.values()) > CACHE_BYTES:
        _CACHE.popitem(last=False)
    return bundle


def load_array(path: Path) -> np.ndarray:
    """One stored array (e.g. the client's diffusion features), kept like the partitions."""
    key = ((str(path), path.stat().st_mtime_ns),)
    if key not in _CACHE:
        _CACHE[key] = {"array": np.load(path)}
        while len(_CACHE) > 1 and sum(_bundle_bytes(b) for b in _CACHE.values()) > CACHE_BYTES:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]["array"]


def client_data(msg: Message, context: Context) -> tuple[dict[str, Any], dict[str, Any]]:
    """The message's settings and the client's own data: its partition, and — for a model that
    uses diffusion features — the features it computed itself in stage 2 (``fedrs.feddiff.features``)."""
    settings = settings_of(msg)
    path = partition_path(context, settings)
    data = load_partition(path, settings.get("client_data_dirs") or ())
    if settings.get("split") == "validation":
        data = validation_view(data)
    if settings.get("client_features"):
        features = FeatureSettings.from_dict(settings["client_features"])
        data = attach_features(data, features, node_store(context.node_config, features.store, path), load_array)
    return settings, data


def settings_of(msg: Message) -> dict[str, Any]:
    return json.loads(str(msg.content.config_records["config"]["settings"]))


def inject_faults(settings: dict[str, Any], rnd: int, client_id: int) -> str | None:
    """Test hooks for fault tolerance: fail or poison this client in a given round (a client whose
    reply never arrives is the server's hook, ``faults.lost``, so no test waits on a clock)."""
    faults = settings.get("faults") or {}
    if [rnd, client_id] in faults.get("raise", []):
        raise RuntimeError(f"injected failure of client {client_id} in round {rnd}")
    return "nan" if [rnd, client_id] in faults.get("nan", []) else None


def received_weights(msg: Message, context: Context, rnd: int, split: str | None = None) -> dict[str, torch.Tensor]:
    """This round's global weights: dense, a compressed delta against what this node holds, or
    (no arrays) those that came with this round's exchange. Kept in the node's state — those it
    scores its validation pixels with (``split: validation``) apart from those it trains from, which
    stay the reference of the next download."""
    content, state = msg.content, context.state
    held = int(str(state.config_records["weights_round"]["round"])) if "weights_round" in state else None
    slot = "validation_weights" if split == "validation" else "weights"
    if "arrays" not in content:
        kept = int(str(state.config_records[f"{slot}_round"]["round"])) if f"{slot}_round" in state else None
        if kept != rnd:
            raise RuntimeError(f"no weights for round {rnd}: the exchange did not deliver them to this node")
        return state.array_records[slot].to_torch_state_dict()
    if "down_codec" in content:
        expected = int(str(content.config_records["reference"]["round"]))
        if held != expected:
            raise RuntimeError(f"the server encoded against round {expected} weights; this node holds "
                               f"{'none' if held is None else held}")
        weights = unpack_tensors(content.array_records["arrays"], content.config_records["down_codec"],
                                 state.array_records["weights"].to_torch_state_dict())
    else:
        weights = content.array_records["arrays"].to_torch_state_dict()
    state[slot] = ArrayRecord.from_torch_state_dict(weights)
    state[f"{slot}_round"] = ConfigRecord({"round": rnd})
    return weights


def load_carry(context: Context) -> dict[str, Any]:
    """What this client kept from its last round (e.g. its optimiser's moments), from node state."""
    if "carry" not in context.state:
        return {}
    blob = context.state.config_records["carry"]["blob"]
    return torch.load(io.BytesIO(bytes(blob)), weights_only=False)  # type: ignore[arg-type]


def save_carry(context: Context, carry: dict[str, Any]) -> None:
    if carry:
        buffer = io.BytesIO()
        torch.save(carry, buffer)
        context.state["carry"] = ConfigRecord({"blob": buffer.getvalue()})


@app.query()
@reports_traceback
def describe(msg: Message, context: Context) -> Message:
    _, data = client_data(msg, context)
    site = data.get("site")
    info = ConfigRecord(
        {
            "client_id": int(data["client_id"]),
            "modalities": ",".join(data["modalities"]),
            "num_samples": int(len(data["labels"])),
            "site": -1 if site is None else int(site),
            "validation_samples": validation_count(data),
        }
    )
    return Message(RecordDict({"info": info}), reply_to=msg)


@app.query("features")
@reports_traceback
def features(msg: Message, context: Context) -> Message:
    """Stage 2: this client's diffusion features of its own pixels, with the global U-Nets it was
    sent, into its own store. Only their shapes and digests go back."""
    started = time.perf_counter()
    settings, data = client_data(msg, context)
    job = settings["features_job"]
    path = partition_path(context, settings)
    store = node_store(context.node_config, str(job.get("store", "")), path)
    unets = received_unets(msg.content, settings["unet_specs"])
    report = compute_features(data, unets, job, store)
    if validation_count(data):  # its validation pixels too: the clients score them (validation: clients)
        report.update({f"validation {m}": r for m, r in compute_features(validation_view(data), unets, job,
                                                                         store).items()})
    return Message(
        RecordDict({"features": ConfigRecord({"report": json.dumps(report)}),
                    "metrics": MetricRecord({"compute_seconds": time.perf_counter() - started})}),
        reply_to=msg,
    )


@app.query("exchange")
@reports_traceback
def exchange(msg: Message, context: Context) -> Message:
    """Branch outputs on the client's own pixels, through the codec: what its site partner receives."""
    started = time.perf_counter()
    settings, data = client_data(msg, context)
    algorithm = get_algorithm(settings["algorithm"])
    model = algorithm.build_model(settings["model"])
    model.load_state_dict(received_weights(msg, context, int(settings["round"]), settings.get("split")), strict=False)
    outputs = algorithm.client_exchange(model, data, tuple(data["modalities"]), settings["train"])
    reported: dict[str, float] = {}
    if settings.get("exchange_privacy"):  # clipped and noised here, before anything leaves the client
        protection = ExchangeProtection.from_dict(settings["exchange_privacy"])
        seeded = derive_seed(settings["seed"], 7_007, int(settings["round"]), int(data["client_id"]))
        # the noise only this client knows (the run seed is in every message: the partner could remove it)
        noise = noise_generator(seeded if protection.deterministic_noise else None)
        outputs, reported = protect_exchange(outputs, protection, noise)
        reported = public_metrics(reported, settings)  # under noised DP the clipped fraction stays here
    codec = settings.get("exchange_compression")
    arrays, consts, dense, sent = pack_tensors(outputs, CodecConfig.from_dict(codec) if codec else None)
    return Message(
        RecordDict(
            {
                "arrays": arrays,
                "codec": consts,
                "metrics": MetricRecord(
                    {"bytes_dense": dense, "bytes_sent": sent, "compute_seconds": time.perf_counter() - started,
                     **reported}
                ),
            }
        ),
        reply_to=msg,
    )


@app.train()
@reports_traceback
def train(msg: Message, context: Context) -> Message:
    """A round's local update, or a stage of a secure sum of held updates (Flower's SecAgg+, whose
    workflow sends its stages as train messages)."""
    if PROTOCOL_RECORD in msg.content.config_records:
        return secaggplus_mod(msg, context, held_contribution)
    started = time.perf_counter()  # this client's own work: data, update, codec (framework time excluded)
    job = round_inputs(msg, context)
    carry = load_carry(context)
    state, metrics = job.algorithm.client_update(job.model, job.data, job.modalities, job.settings["train"], job.seed,
                                                 job.round, carry=carry, **job.extra)
    save_carry(context, carry)
    return upload(msg, context, job, state, metrics, started)


@app.query("statistics")
@reports_traceback
def statistics(msg: Message, context: Context) -> Message:
    """The statistics pass: the final model run over the client's pixels without training; only its
    BatchNorm running statistics go up, the way an update does."""
    started = time.perf_counter()
    job = round_inputs(msg, context)
    state, metrics = job.algorithm.client_statistics(job.model, job.data, job.modalities, job.settings["train"],
                                                     job.seed, job.round, **job.extra)
    return upload(msg, context, job, state, metrics, started)


@app.query("calibration")
@reports_traceback
def calibration(msg: Message, context: Context) -> Message:
    """Classifier calibration: per-class count, sum and outer-product sum of the last layer's inputs
    on the client's pixels (``fedrs.federated.calibration.client_statistics``: clipped, noised under
    record-level DP, else without the classes it holds too few pixels of) — dense, or held for one
    more SecAgg+ sum, scaled by public numbers."""
    started = time.perf_counter()
    job = round_inputs(msg, context)
    cfg = CalibrationConfig.from_dict(job.settings.get("calibration"))
    labels = torch.as_tensor(np.asarray(job.data["labels"]), dtype=torch.long)
    features = job.algorithm.client_features(job.model, job.data, job.modalities, job.settings["train"], **job.extra)
    last = job.model.get_submodule(job.algorithm.require_calibration_layer())
    # the minimum is checked here, not trusted to the server: a request below the floor is refused
    # (CalibrationConfig), and the organisation's own node config may raise it
    minimum = client_minimum(job.settings.get("calibration"), int(context.node_config.get("calibration-min-pixels", 0)))
    record = (job.settings["train"] or {}).get("record_privacy") or {}
    seeded = derive_seed(job.settings["seed"], 8_008, job.round, job.client_id)
    noise = noise_generator(seeded if record.get("deterministic_noise") else None)  # only this client knows it
    sums = client_statistics(features, labels, int(last.get_parameter("weight").shape[0]), cfg, minimum, noise)
    size = payload_bytes(sums)
    metrics: dict[str, int | float | list[int] | list[float]] = {"client_id": job.client_id, "bytes_dense": size,
                                                                 "bytes_sent": size}
    records: dict[str, Any] = {}
    if job.settings.get("secure_aggregation") is not None:
        assert cfg.feature_clip is not None  # checked by the server before the first round
        pixels = int(job.settings["calibration_pixels"])
        if pixels < len(labels):  # a scale below this client's own count could push its sums out of range
            raise ValueError("calibration: the secure sums' pixel scale is below this client's pixel count; refused")
        scales = secure_scales(pixels, float(cfg.feature_clip))
        hold_update(context, {k: v / scales[k] for k, v in sums.items()}, job.round,
                    derive_seed(job.settings["seed"], 5_005, job.round, job.client_id))
        metrics["bytes_sent"] = 0
    else:
        records = {"arrays": ArrayRecord.from_torch_state_dict(sums), "codec": ConfigRecord({})}
        if cfg.noise_multiplier == 0:  # not len(labels): that would tell how many pixels were withheld
            metrics["num_samples"] = int(sums["count"].sum())
            # the statistics go up in the clear: their largest feature norm tells a user the feature_clip
            # that SecAgg+ or DP would need (and little beyond the outer-product sums' traces)
            metrics["feature_norm_max"] = float(features.detach().double().flatten(1).norm(dim=1).max())
    metrics["compute_seconds"] = time.perf_counter() - started
    return Message(RecordDict({**records, "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query("probe")
@reports_traceback
def probe(msg: Message, context: Context) -> Message:
    """Stage 1's linear probe: the class statistics of the probe inputs (raw bands, diffusion
    features per timestep) of the client's own training pixels under the new global U-Net, without
    the classes it holds too few pixels of (``fedrs.feddiff.probe``)."""
    started = time.perf_counter()
    job = round_inputs(msg, context)
    cfg = ProbeConfig.from_dict(job.settings["probe"])
    inputs = job.algorithm.probe_inputs(job.model, job.data, cfg.timesteps, int(job.settings["seed"]),
                                        job.settings.get("train"))
    labels = torch.as_tensor(np.asarray(job.data["labels"]), dtype=torch.long)
    minimum = max(int(cfg.min_client_pixels), int(context.node_config.get("calibration-min-pixels", 0)))
    sums = probe_statistics(inputs, labels, int(job.settings["probe_classes"]), minimum)
    size = payload_bytes(sums)
    return Message(RecordDict({"arrays": ArrayRecord.from_torch_state_dict(sums), "codec": ConfigRecord({}),
                               "metrics": MetricRecord({"client_id": job.client_id, "bytes_dense": size,
                                                        "bytes_sent": size,
                                                        "compute_seconds": time.perf_counter() - started})}),
                   reply_to=msg)


@app.query("validation")
@reports_traceback
def validation(msg: Message, context: Context) -> Message:
    """The global model's confusion counts on the client's own validation pixels (FedDiff: with its
    partner's outputs of them) — dense, with their summed cross-entropy (and, asked for ``temperatures``,
    that sum at each: temperature scaling's fit), or held for one more SecAgg+ sum, scaled by the
    public bound on any client's validation pixels (no cross-entropy is sent then: one organisation's
    loss in the clear would tell what the secure sum hides). No prediction, no pixel leaves."""
    started = time.perf_counter()
    job = round_inputs(msg, context)
    assert isinstance(job.algorithm, ClassifierAlgorithm)
    labels = np.asarray(job.data["labels"])
    tally = CrossEntropyTally(labels, tuple(float(t) for t in job.settings.get("temperatures") or ()))
    predicted = job.algorithm.client_predict(job.model, job.data, job.modalities, job.settings["train"],
                                             tally=tally, **job.extra)
    counts = torch.as_tensor(confusion_matrix(labels, predicted, int(job.data["num_classes"])), dtype=torch.float64)
    metrics: dict[str, int | float | list[int] | list[float]] = {"client_id": job.client_id}
    records: dict[str, Any] = {}
    if job.settings.get("secure_aggregation") is not None:
        scale = int(job.settings["validation_scale"])
        if scale < len(labels):  # a scale below this client's own count could push its counts out of range
            raise ValueError("validation: the secure sum's pixel scale is below this client's pixel count; refused")
        hold_update(context, {CONFUSION: counts / scale}, job.round,
                    derive_seed(job.settings["seed"], 5_005, job.round, job.client_id))
        metrics.update(bytes_dense=payload_bytes({CONFUSION: counts}), bytes_sent=0)
    else:
        sums = {CONFUSION: counts, CROSS_ENTROPY: torch.tensor([tally.total], dtype=torch.float64)}
        if tally.temperatures:  # temperature scaling's fit: the same sum at each temperature of the grid
            sums[CROSS_ENTROPY_BY_TEMPERATURE] = torch.as_tensor(tally.by_temperature, dtype=torch.float64)
        records = {"arrays": ArrayRecord.from_torch_state_dict(sums), "codec": ConfigRecord({})}
        metrics.update(bytes_dense=payload_bytes(sums), bytes_sent=payload_bytes(sums))
    metrics["compute_seconds"] = time.perf_counter() - started
    return Message(RecordDict({**records, "metrics": MetricRecord(metrics)}), reply_to=msg)


@dataclass
class RoundInputs:
    """What every per-round handler starts from: the settings, the client's data, the model with
    this round's global weights, and the partner's relayed outputs (FedDiff)."""

    settings: dict[str, Any]
    data: dict[str, Any]
    algorithm: Algorithm
    model: torch.nn.Module
    received: dict[str, torch.Tensor]
    extra: dict[str, Any]
    poison: str | None

    @property
    def client_id(self) -> int:
        return int(self.data["client_id"])

    @property
    def round(self) -> int:
        return int(self.settings["round"])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.data["modalities"])

    @property
    def seed(self) -> int:
        return derive_seed(self.settings["seed"], self.round, self.client_id)


def round_inputs(msg: Message, context: Context) -> RoundInputs:
    settings, data = client_data(msg, context)
    rnd = int(settings["round"])
    poison = inject_faults(settings, rnd, int(data["client_id"]))
    algorithm = get_algorithm(settings["algorithm"])
    model = algorithm.build_model(settings["model"])
    received = received_weights(msg, context, rnd, settings.get("split"))
    model.load_state_dict(received, strict=False)
    extra = {}
    if "partner" in msg.content:  # the site partner's branch outputs, relayed by the server
        extra["partner"] = unpack_tensors(msg.content.array_records["partner"],
                                          msg.content.config_records["partner_codec"])
    return RoundInputs(settings, data, algorithm, model, received, extra, poison)


def upload(msg: Message, context: Context, job: RoundInputs, state: dict[str, torch.Tensor],
           metrics: dict[str, float], started: float) -> Message:
    """The reply of a per-round handler: the client's tensors along this run's upload path
    (``fedrs.federated.upload``)."""
    steps = upload_path(job.settings, context, job.received, job.round,
                        derive_seed(job.settings["seed"], 5_005, job.round, job.client_id), job.poison)
    out = run_path(steps, Outgoing(state, {**{k: float(v) for k, v in metrics.items()}, "client_id": job.client_id}))
    reported = {**out.metrics, "compute_seconds": time.perf_counter() - started}
    records: dict[str, ArrayRecord | ConfigRecord | MetricRecord] = {"metrics": MetricRecord(reported)}
    if out.arrays is not None:
        records.update({"arrays": out.arrays, "codec": out.codec})
    return Message(RecordDict(records), reply_to=msg)
