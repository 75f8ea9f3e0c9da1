"""The server's round loop, shared by every algorithm and by both Flower engines.

A round is five steps, each a function over one per-round record (``RoundRecord``) that tests
drive against a fake grid:

1. ``configure_round`` — sample clients (seeded), set the round's learning rate, encode each
   client's download (dense, or a compressed delta against what it holds);
2. ``exchange_features`` (algorithms that exchange branch outputs) and ``collect_updates`` — send,
   wait within the timeout, note who failed (raised) or was dropped (no reply, no partner), decode
   the replies;
3. ``aggregate_round`` — reject non-finite or outlying updates, aggregate if at least
   ``min_clients`` survive;
   After the last round, ``statistics_round``: every client recomputes the BatchNorm statistics of
   the final global model on its own pixels and sends only those, pooled by the server;
4. ``evaluate_round`` — score the global model on the (seeded subset of) test pixels;
5. ``record_round`` — the history row and traffic log, the loss trend, the checkpoint (global
   model, RNG state, history) so an interrupted run resumes; and ``FailureWatch``, which stops the
   run when a failure is systematic rather than transient.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import compute_stdv
from tqdm.auto import tqdm

from fedrs.config import from_mapping
from fedrs.federated.aggregation import ClientUpdate, State, screen_updates
from fedrs.federated.algorithms import Algorithm, get_algorithm
from fedrs.federated.algorithms.base import ModalityAwareAlgorithm
from fedrs.federated.calibration import CalibrationConfig, calibrate_layer, pool_statistics
from fedrs.federated.checkpoint import load_checkpoint, save_checkpoint
from fedrs.federated.codec import CodecConfig, ErrorFeedback
from fedrs.federated.local import derive_seed, lr_at_round, norm_statistic_names
from fedrs.federated.privacy import PrivacyConfig, epsilon_spent, private_aggregate
from fedrs.federated.secure import MeteredGrid, SecureAggregationConfig, apply_means, secure_groups, secure_mean
from fedrs.federated.wire import pack_exact, pack_tensors, payload_bytes, unpack_tensors, unpack_update

logger = logging.getLogger(__name__)

# settings that do not change the result, so a checkpoint made with other values can be resumed
_RESUMABLE = {"resume", "stop_after_round", "checkpoint_dir", "round_timeout", "node_wait_timeout", "faults",
              "failure_tolerance", "loss_growth_rounds"}


# what clients report besides their training metrics (averaged per round into train_<key>)
NOT_TRAINING_METRICS = {"train_loss", "num_samples", "client_id", "bytes_dense", "bytes_sent", "compute_seconds",
                        "update_norm"}


class RunInterrupted(RuntimeError):
    """Raised after the checkpoint of ``stop_after_round``: a deliberate, resumable stop."""


class SystematicFailure(RuntimeError):
    """Clients fail in a way that more rounds will not mend; the message carries their error."""


@dataclass
class FederatedConfig:
    algorithm: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    num_rounds: int = 20
    clients_per_round: int | None = None   # None: every eligible client
    min_clients: int = 2
    seed: int = 0
    partition_dir: str = ""
    round_timeout: float | None = 600.0    # seconds to wait for replies; None: wait for all
    lr_schedule: str = "cosine"            # per-round learning rate: cosine | constant
    outlier_factor: float = 10.0
    max_update_norm: float | None = None
    eval_samples: int | None = 4000        # test pixels scored each round (seeded subset); None: all
    failure_tolerance: int | None = 2      # consecutive rounds of the same failure that stop a run; None: never
    loss_growth_rounds: int = 3            # rounds of rising training loss that raise a warning
    checkpoint_dir: str | None = None
    resume: bool = False
    stop_after_round: int | None = None
    node_wait_timeout: float = 120.0
    faults: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] | None = None  # codec settings for uploaded updates; None: dense
    exchange_compression: dict[str, Any] | None = None  # codec for exchanged features; None: dense
    downlink_compression: dict[str, Any] | None = None  # global weights as compressed deltas; None: dense
    client_data_dirs: list[str] = field(default_factory=list)  # more per-client files of the same name
    client_features: dict[str, Any] | None = None  # FedDiff: which stage-2 features each client reads from its store
    statistics_pass: bool = True  # after the last round, BatchNorm statistics of the final model from every client
    average_last_rounds: int = 0  # the final model: the mean of the last N rounds' global models (SWA); 0: the last
    privacy: dict[str, Any] | None = None  # client-level DP: clipping and Gaussian noise (fedrs.federated.privacy)
    exchange_privacy: dict[str, Any] | None = None  # FedDiff: per-pixel clipping and noise on the relayed outputs
    weighting: str = "samples"  # aggregation weights: samples (FedAvg) | equal (every client counts once)
    secure_aggregation: dict[str, Any] | None = None  # Flower's SecAgg+, one secure sum per modality group ({}: its
                                                      # defaults); None: off
    calibration: dict[str, Any] | None = None  # after the last round, the last layer retrained on virtual features
                                               # from the clients' class statistics (fedrs.federated.calibration)

    @property
    def secure(self) -> bool:
        return self.secure_aggregation is not None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FederatedConfig:
        return from_mapping(cls, d, label="federated config")

    def digest(self) -> str:
        relevant = {k: v for k, v in asdict(self).items() if k not in _RESUMABLE}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def settings(self) -> dict[str, Any]:
        """What every message carries to the clients (the round and its learning rate are added)."""
        return {"algorithm": self.algorithm, "model": self.model, "train": self.train, "seed": self.seed,
                "partition_dir": self.partition_dir, "faults": self.faults, "compression": self.compression,
                "exchange_compression": self.exchange_compression, "client_data_dirs": self.client_data_dirs,
                "client_features": self.client_features, "privacy": self.privacy,
                "exchange_privacy": self.exchange_privacy, "secure_aggregation": self.secure_aggregation}


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {expected} Flower nodes connected within {timeout:.0f} s")
        time.sleep(0.1)
        nodes = list(grid.get_node_ids())
    return nodes


def make_message(content: dict[str, Any], settings: dict[str, Any], node: int, kind: str, rnd: int) -> Message:
    record = RecordDict({**content, "config": ConfigRecord({"settings": json.dumps(settings)})})
    return Message(record, dst_node_id=node, message_type=kind, group_id=str(rnd))


def discover_clients(grid: Grid, nodes: list[int], settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Ask every node which partition it holds: client id → {node, modalities, num_samples, site}."""
    replies = grid.send_and_receive([make_message({}, settings, n, "query", 0) for n in nodes])
    clients: dict[int, dict[str, Any]] = {}
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} could not load its partition: {reply.error.reason}")
        info = reply.content.config_records["info"]
        cid = int(str(info["client_id"]))
        if cid in clients:
            raise RuntimeError(f"two nodes hold the partition of client {cid}")
        clients[cid] = {"node": reply.metadata.src_node_id, "modalities": tuple(str(info["modalities"]).split(",")),
                        "num_samples": int(str(info["num_samples"])), "site": int(str(info.get("site", -1)))}
    return clients


def eval_subset(test: dict[str, Any], n: int | None, seed: int) -> dict[str, Any]:
    total = len(test["labels"])
    if not n or n >= total:
        return test
    idx = np.sort(np.random.default_rng(derive_seed(seed, 7_777)).choice(total, n, replace=False))
    return {k: (v[idx] if isinstance(v, np.ndarray) and len(v) == total else v) for k, v in test.items()}


def sample_clients(rng: np.random.Generator, eligible: list[int], k: int, clients: dict[int, dict[str, Any]],
                   by_site: bool) -> list[int]:
    """``k`` clients uniformly (seeded); with ``by_site``, whole sites so both holders take part."""
    if not by_site:
        return sorted(int(c) for c in rng.choice(eligible, size=k, replace=False))
    sites = sorted({clients[c]["site"] for c in eligible})
    per_site = max(1, round(k * len(sites) / max(len(eligible), 1)))
    chosen = {int(s) for s in rng.choice(sites, size=min(per_site, len(sites)), replace=False)}
    return sorted(c for c in eligible if clients[c]["site"] in chosen)


@dataclass
class Downlink:
    """What the server believes each client holds, so it can send compressed deltas against it."""

    codec: CodecConfig | None
    references: dict[int, tuple[int, State]] = field(default_factory=dict)
    feedback: dict[int, ErrorFeedback] = field(default_factory=dict)

    def encode(self, cid: int, state: State, rnd: int, exact: bool = False) -> tuple[dict[str, Any], int, int, State]:
        """Records to send, dense bytes, bytes as sent, and the weights the client will decode.
        ``exact``: the client must hold exactly ``state`` — only the tensors that changed since its
        last download travel, raw (nothing goes through the codec)."""
        if self.codec is None or cid not in self.references:
            self.references[cid] = (rnd, state)
            size = payload_bytes(state)
            return {"arrays": ArrayRecord.from_torch_state_dict(state)}, size, size, state
        ref_round, reference = self.references[cid]
        if exact:
            arrays, consts, dense, sent = pack_exact(state, reference)
        else:
            arrays, consts, dense, sent = pack_tensors(state, self.codec, reference,
                                                       self.feedback.setdefault(cid, ErrorFeedback()))
        decoded = unpack_tensors(arrays, consts, reference)  # bit-identical to what the client decodes
        self.references[cid] = (rnd, decoded)
        content = {"arrays": arrays, "down_codec": consts, "reference": ConfigRecord({"round": ref_round})}
        return content, dense, sent, decoded

    def forget(self, cid: int) -> None:
        """A client that failed may not hold what we think: its next download goes dense."""
        self.references.pop(cid, None)
        self.feedback.pop(cid, None)


@dataclass
class RunState:
    """Everything the round steps share across rounds."""

    cfg: FederatedConfig
    algorithm: Algorithm
    model: torch.nn.Module
    global_state: State
    rng: np.random.Generator
    clients: dict[int, dict[str, Any]]
    eligible: list[int]
    test: dict[str, Any]
    downlink: Downlink
    history: list[dict[str, Any]] = field(default_factory=list)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    tail: State | None = None  # running mean of the global models of the rounds averaged so far
    tail_rounds: int = 0
    privacy_releases: list[tuple[float, float]] = field(default_factory=list)  # (σ, sampling rate) per DP aggregate

    @property
    def per_round(self) -> int:
        return min(self.cfg.clients_per_round or len(self.eligible), len(self.eligible))


@dataclass
class Download:
    content: dict[str, Any]
    bytes_dense: int
    bytes_sent: int
    decoded: State  # what the client will hold after decoding: the reference of its upload


@dataclass
class RoundRecord:
    """One round as it happens: who was asked, what went each way, who failed or was dropped and
    why, what was accepted — and, once evaluated, the scores. ``row()`` is its history entry."""

    round: int
    lr: float
    settings: dict[str, Any]
    sampled: list[int]
    downloads: dict[int, Download] = field(default_factory=dict)
    relayed: dict[int, tuple[Any, Any]] = field(default_factory=dict)  # partner outputs, still encoded
    failed: list[dict[str, Any]] = field(default_factory=list)  # the client raised: its error
    dropped: list[dict[str, Any]] = field(default_factory=list)  # no reply, or no partner outputs
    updates: list[ClientUpdate] = field(default_factory=list)
    accepted: list[ClientUpdate] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    aggregated: bool = False
    scores: dict[str, float] = field(default_factory=dict)
    traffic: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    wait: float = 0.0
    client_seconds: dict[int, float] = field(default_factory=dict)
    statistics_from: list[int] = field(default_factory=list)  # clients whose BatchNorm statistics were pooled
    privacy: dict[str, Any] = field(default_factory=dict)  # the DP aggregate's clipping, noise and ε so far
    exchange_protection: dict[int, tuple[float, float]] = field(default_factory=dict)  # (clipped fraction, noise std)
    scores_before_statistics: dict[str, float] = field(default_factory=dict)
    scores_before_calibration: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)  # the calibration pass: clients, classes, losses
    secure_means: State = field(default_factory=dict)  # secure aggregation: the unmasked mean contributions
    secure_from: dict[int, int] = field(default_factory=dict)  # client → secure sums it is in
    secure_members: dict[str, int] = field(default_factory=dict)  # tensor → clients in its secure sum
    secure: dict[str, Any] = field(default_factory=dict)  # secure sums run, failed, their seconds

    @property
    def participants(self) -> list[int]:
        """Sampled clients not (yet) failed or dropped."""
        out = {e["client_id"] for e in self.failed + self.dropped}
        return [c for c in self.sampled if c not in out]

    def send_and_receive(self, grid: Grid, messages: list[Message], timeout: float | None) -> dict[int, Message]:
        t0 = time.perf_counter()
        replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=timeout)}
        self.wait += time.perf_counter() - t0
        return replies

    def note_reply(self, cid: int, reply: Message | None, stage: str) -> bool:
        """Record a missing or failed reply; True when the reply carries content."""
        if [self.round, cid] in (self.settings.get("faults") or {}).get("lost", []):
            reply = None  # test hook: this client's replies of the round are lost on their way back
        if reply is None:
            self.dropped.append({"client_id": cid, "stage": stage, "reason": "no reply within the round timeout"})
            return False
        if reply.has_error():
            self.failed.append({"client_id": cid, "stage": stage, "error": client_error(reply.error.reason or "")})
            return False
        seconds = reply.content.metric_records["metrics"].get("compute_seconds", 0.0)
        self.client_seconds[cid] = self.client_seconds.get(cid, 0.0) + float(str(seconds))
        return True

    def log_traffic(self, cid: int, direction: str, payload: str, dense: int, sent: int) -> None:
        self.traffic.append(
            {
                "round": self.round,
                "client_id": cid,
                "direction": direction,
                "payload": payload,
                "bytes_dense": int(dense),
                "bytes_sent": int(sent),
            }
        )

    def row(self) -> dict[str, Any]:
        total = time.perf_counter() - self.started
        weight = sum(u.num_samples for u in self.accepted)
        train_loss = (sum(float(u.metrics.get("train_loss", 0.0)) * u.num_samples for u in self.accepted) / weight
                      if weight else None)
        reported = sorted({k for u in self.accepted for k in u.metrics} - NOT_TRAINING_METRICS)
        parts = ({f"train_{k}": sum(float(u.metrics.get(k, 0.0)) * u.num_samples for u in self.accepted) / weight
                  for k in reported} if weight else {})
        sums = {
            f"{key}{suffix}": sum(t[field_] for t in self.traffic if t["direction"] == direction)
            for key, direction in (("bytes_down", "down"), ("bytes_up", "up"))
            for suffix, field_ in (("", "bytes_sent"), ("_dense", "bytes_dense"))
        }
        return {
            "round": self.round,
            "sampled": self.sampled,
            "accepted": [u.client_id for u in self.accepted],
            "failed": [
                {"client_id": f["client_id"], "stage": f["stage"],
                 "reason": (f["error"].strip().splitlines() or ["no message"])[-1][:300]}
                for f in self.failed
            ],
            "dropped": self.dropped,
            "rejected": [{"client_id": c, "reason": r} for c, r in self.rejected],
            "aggregated": self.aggregated,
            "train_loss": train_loss,
            **parts,
            "lr": self.lr,
            **{f"test_{k}": v for k, v in self.scores.items()},
            **sums,
            "seconds": total,
            "wait_seconds": self.wait,
            "server_seconds": total - self.wait,
            "client_seconds": sum(self.client_seconds.values()),
            "client_seconds_max": max(self.client_seconds.values(), default=0.0),
            "statistics_from": self.statistics_from,
            **{f"test_{k}_before_statistics": v for k, v in self.scores_before_statistics.items()},
            **{f"test_{k}_before_calibration": v for k, v in self.scores_before_calibration.items()},
            **{f"calibration_{k}": v for k, v in self.calibration.items()},
            **({"dp_epsilon": self.privacy["epsilon"], "dp_noise_std": self.privacy["noise_std_max"],
                "dp_clipped": self.privacy["clipped"],
                "dp_update_norm_median": float(np.median(self.privacy["update_norms"]))} if self.privacy else {}),
            **({f"secagg_{k}": v for k, v in self.secure.items()}),
            **({"exchange_noise_std": max(v[1] for v in self.exchange_protection.values()),
                "exchange_clipped_fraction": float(np.mean([v[0] for v in self.exchange_protection.values()]))}
               if self.exchange_protection else {}),
        }


def payload_counts(reply: Message) -> tuple[int, int]:
    """Bytes a client's payload would take dense, and as it was sent (what its reply reports)."""
    metrics = reply.content.metric_records["metrics"]
    return int(str(metrics.get("bytes_dense", 0))), int(str(metrics.get("bytes_sent", 0)))


def client_error(reason: str) -> str:
    """A client's error as Flower reports it (``<class '…'>:<'message'>``, possibly nested), unwrapped
    to the message — with the client's own traceback in it when the ClientApp sent one."""
    text = reason.replace("\\n", "\n")
    while (match := re.fullmatch(r"\s*<class '[^']*'>:<'(.*)'>\s*", text, re.S)) is not None:
        text = match.group(1)
    return text.strip()


def error_signature(error: str) -> str:
    """The line that names an error (its last non-empty line) with numbers masked: an error that
    repeats with another round, size or index in its message is the same error."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return re.sub(r"\d+", "#", lines[-1][:300]) if lines else ""


# ----------------------------------------------------------------------------- the five steps
def configure_round(run: RunState, rnd: int) -> RoundRecord:
    """Sample the round's clients and encode each one's download of the global weights."""
    cfg = run.cfg
    sampled = sample_clients(
        run.rng, run.eligible, run.per_round, run.clients, by_site=run.algorithm.exchanges_features
    )
    lr = lr_at_round(float(cfg.train.get("lr", 1e-3)), rnd, cfg.num_rounds, cfg.lr_schedule)
    settings = {**cfg.settings(), "round": rnd, "train": {**cfg.train, "lr": lr}}
    record = RoundRecord(rnd, lr, settings, sampled)
    encode_downloads(run, record)
    return record


def encode_downloads(run: RunState, record: RoundRecord, exact: bool = False) -> None:
    """Each sampled client's download of the global weights it holds a part in; ``exact``: the
    client decodes exactly the global weights (only what changed since its last download travels)."""
    for cid in record.sampled:
        keys = sorted(run.algorithm.client_keys(run.model, run.clients[cid]["modalities"]))
        state = {k: run.global_state[k] for k in keys}
        content, dense, sent, decoded = run.downlink.encode(cid, state, record.round, exact)
        record.downloads[cid] = Download(content, dense, sent, decoded)
        record.log_traffic(cid, "down", "weights", dense, sent)


def exchange_features(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """Collect each client's encoded branch outputs (the weights travel with this message) and
    relay them, untouched, to its site partner. The server never decodes them; a client whose
    partner could not deliver is dropped from the round."""
    cfg, clients = run.cfg, run.clients
    messages = [
        make_message(
            dict(record.downloads[c].content), record.settings, clients[c]["node"], "query.exchange", record.round
        )
        for c in record.sampled
    ]
    replies = record.send_and_receive(grid, messages, cfg.round_timeout)
    delivered: dict[int, Message] = {}
    for cid in record.sampled:
        reply = replies.get(clients[cid]["node"])
        if record.note_reply(cid, reply, "exchange"):
            assert reply is not None
            delivered[cid] = reply
            record.log_traffic(cid, "up", "features", *payload_counts(reply))
            metrics = reply.content.metric_records["metrics"]
            if "exchange_noise_std" in metrics:  # what the protection did, reported with the round
                record.exchange_protection[cid] = (float(str(metrics["exchange_clipped_fraction"])),
                                                   float(str(metrics["exchange_noise_std"])))
    for cid in list(delivered):
        partners = [p for p in delivered if p != cid and clients[p]["site"] == clients[cid]["site"]]
        if not partners:
            record.dropped.append(
                {"client_id": cid, "stage": "exchange", "reason": "its site partner delivered no features"}
            )
            continue
        reply = delivered[partners[0]]
        record.relayed[cid] = (reply.content.array_records["arrays"], reply.content.config_records["codec"])
        record.log_traffic(cid, "down", "features", *payload_counts(reply))


def collect_updates(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """Send the train messages to the round's remaining participants and decode their updates."""
    cfg, clients, exchanged = run.cfg, run.clients, run.algorithm.exchanges_features
    participants = record.participants
    messages = []
    for cid in participants:
        content = {} if exchanged else dict(record.downloads[cid].content)  # exchanged: weights already there
        if cid in record.relayed:
            content["partner"], content["partner_codec"] = record.relayed[cid]
        messages.append(make_message(content, record.settings, clients[cid]["node"], "train", record.round))
    replies = record.send_and_receive(grid, messages, cfg.round_timeout)
    for cid in participants:
        reply = replies.get(clients[cid]["node"])
        if not record.note_reply(cid, reply, "train"):
            continue
        assert reply is not None
        metrics = dict(reply.content.metric_records["metrics"])
        if cfg.secure:  # the update stays on the client until the secure sums
            record.log_traffic(cid, "up", "weights", *payload_counts(reply))
            record.updates.append(ClientUpdate(cid, {}, clients[cid]["num_samples"], clients[cid]["modalities"],
                                               metrics))
            continue
        arrays, codec = reply.content.array_records["arrays"], reply.content.config_records["codec"]
        coded = cfg.compression and not record.settings["train"].get("calibration_only")  # statistics go dense
        state = (unpack_update(arrays, codec, record.downloads[cid].decoded) if coded
                 else dict(arrays.to_torch_state_dict()))
        record.log_traffic(cid, "up", "weights", *payload_counts(reply))
        record.updates.append(
            ClientUpdate(cid, state, clients[cid]["num_samples"], clients[cid]["modalities"], metrics)
        )
    if cfg.secure:
        secure_sums(grid, run, record)
    for entry in record.failed + record.dropped:  # it may not hold what we sent: dense next time
        run.downlink.forget(entry["client_id"])


def secure_sums(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """One SecAgg+ run per group of tensors held by the same clients (``fedrs.federated.secure``):
    the mean contributions and who is in them. A group with fewer than two members cannot be summed
    securely and keeps its global values; a client that fails inside the protocol is dropped from
    its sums by SecAgg+ itself (its masks are reconstructed from the others' shares)."""
    cfg, secure = run.cfg, SecureAggregationConfig.from_dict(run.cfg.secure_aggregation or {})
    statistics = norm_statistic_names(run.model) if record.settings["train"].get("statistics_only") else None
    holdings = {}
    for u in record.updates:
        keys = run.algorithm.client_keys(run.model, u.modalities)
        holdings[u.client_id] = [
            k for k in keys if torch.is_floating_point(run.global_state[k])
            and (statistics is None or k in statistics)
            and (run.algorithm.owner(k) is None or run.algorithm.owner(k) in u.modalities)
        ]
    equal = cfg.weighting == "equal" or bool(cfg.privacy)  # DP averages clipped updates with equal weights
    node_of = {u.client_id: run.clients[u.client_id]["node"] for u in record.updates}
    client_of = {node: cid for cid, node in node_of.items()}
    metered = MeteredGrid(grid)
    groups = secure_groups(holdings)
    failed = skipped = 0
    for index, (names, members) in enumerate(groups):
        if len(members) < 2:
            skipped += 1
            logger.warning("round %d: %d tensors are held by one client only (%s); a secure sum needs two, so "
                           "they keep their global values", record.round, len(names), members)
            continue
        weights = {node_of[c]: 1 if equal else int(run.clients[c]["num_samples"]) for c in members}
        means, nodes = secure_mean(metered, weights, names, record.round, index, secure,  # type: ignore[arg-type]
                                   cfg.round_timeout)
        if means is None:
            failed += 1
            logger.warning("round %d: the secure sum of %d tensors over clients %s did not finish; they keep their "
                           "global values", record.round, len(names), list(members))
            continue
        for name, value in means.items():
            record.secure_means[name] = torch.from_numpy(np.asarray(value, dtype=np.float64))
            record.secure_members[name] = len(nodes)
        for node in nodes:
            record.secure_from[client_of[node]] = record.secure_from.get(client_of[node], 0) + 1
        record.secure.setdefault("group_sizes", []).append(len(nodes))
    record.wait += metered.seconds
    record.secure.update({"sums": len(groups) - skipped - failed, "sums_failed": failed, "sums_skipped": skipped,
                          "seconds": record.secure.get("seconds", 0.0) + metered.seconds})
    for node in metered.down.keys() | metered.up.keys():
        record.log_traffic(client_of[node], "down", "secagg", 0, metered.down.get(node, 0))
        record.log_traffic(client_of[node], "up", "secagg", 0, metered.up.get(node, 0))


def apply_secure_means(run: RunState, source: RoundRecord, record: RoundRecord, sampling_rate: float) -> None:
    """The global state moved by the secure means of ``source`` — with DP, each group's mean noised
    with σ·C/n_g on the server (the clients clipped their own updates)."""
    means = dict(source.secure_means)

    def noise_means(privacy: PrivacyConfig, noise: torch.Generator) -> dict[str, Any]:
        stds = set()
        for name in sorted(means):  # the sorted order fixes the noise each tensor draws
            std = compute_stdv(privacy.noise_multiplier, privacy.clipping_norm, source.secure_members[name])
            stds.add(std)
            means[name] = means[name] + torch.randn(means[name].shape, generator=noise, dtype=torch.float64) * std
        norms = [float(u.metrics["update_norm"]) for u in source.updates if "update_norm" in u.metrics]
        return {"update_norms": norms or [float("nan")], "clipped": sum(n > privacy.clipping_norm for n in norms),
                "noise_std_max": max(stds, default=0.0), "noise_std_min": min(stds, default=0.0)}

    if run.cfg.privacy:
        private_release(run, record, sampling_rate, noise_means)
    run.global_state = apply_means(run.global_state, means, pooled_variances=not run.cfg.privacy)


def aggregate_round(run: RunState, record: RoundRecord) -> None:
    """Screen the updates and, with at least ``min_clients`` accepted, aggregate them."""
    cfg = run.cfg
    # under DP, clipping bounds every update: screening by norm would only leak who was large
    if cfg.secure:  # the server sees no single update: nothing to screen
        record.accepted = [u for u in record.updates if u.client_id in record.secure_from]
        record.aggregated = len(record.accepted) >= cfg.min_clients and bool(record.secure_means)
        if record.aggregated:
            apply_secure_means(run, record, record, len(record.sampled) / max(len(run.eligible), 1))
        else:
            logger.warning("round %d: %d clients in the secure sums, below min_clients=%d; global model kept",
                           record.round, len(record.accepted), cfg.min_clients)
        return
    record.accepted, record.rejected = screen_updates(
        record.updates, run.global_state, *((float("inf"), None) if cfg.privacy else (cfg.outlier_factor,
                                                                                      cfg.max_update_norm))
    )
    record.aggregated = len(record.accepted) >= cfg.min_clients
    if record.aggregated:
        aggregate_updates(run, record, record.accepted, len(record.sampled) / max(len(run.eligible), 1))
    else:
        logger.warning(
            "round %d: %d usable updates, below min_clients=%d; global model kept",
            record.round,
            len(record.accepted),
            cfg.min_clients,
        )


def aggregate_updates(run: RunState, record: RoundRecord, updates: list[ClientUpdate], sampling_rate: float) -> None:
    """The algorithm's aggregate, or with ``privacy`` the DP aggregate (clipped, equal weights,
    Gaussian noise), whose release the accountant counts."""
    if not run.cfg.privacy:
        if run.cfg.weighting == "equal":  # each client once, whatever its pixel count (balances class-disjoint sites)
            updates = [replace(u, num_samples=1) for u in updates]
        run.global_state = run.algorithm.aggregate(run.global_state, updates)
        return

    def aggregate(privacy: PrivacyConfig, noise: torch.Generator) -> dict[str, Any]:
        run.global_state, report = private_aggregate(run.global_state, updates, run.algorithm.owner, privacy, noise)
        return report

    private_release(run, record, sampling_rate, aggregate)


def private_release(run: RunState, record: RoundRecord, sampling_rate: float,
                    release: Callable[[PrivacyConfig, torch.Generator], dict[str, Any]]) -> None:
    """One DP release: ``release`` draws its noise from the round's seeded generator and reports
    what it clipped and added; the accountant counts it and the round's record carries ε so far."""
    assert run.cfg.privacy is not None
    privacy = PrivacyConfig.from_dict(run.cfg.privacy)
    noise = torch.Generator().manual_seed(derive_seed(run.cfg.seed, 9_001, record.round, len(run.privacy_releases)))
    report = release(privacy, noise)
    run.privacy_releases.append((privacy.noise_multiplier, sampling_rate))
    epsilon = epsilon_spent(run.privacy_releases, privacy.delta)
    record.privacy = {**report, "epsilon": epsilon if np.isfinite(epsilon) else None}  # None: no guarantee


def accumulate_tail(run: RunState, rnd: int) -> None:
    """Fold this round's global model into the running mean of the last ``average_last_rounds``."""
    keep = run.cfg.average_last_rounds
    if keep <= 1 or rnd <= run.cfg.num_rounds - keep:
        return
    run.tail_rounds += 1
    if run.tail is None:
        run.tail = {k: v.double() if torch.is_floating_point(v) else v.clone() for k, v in run.global_state.items()}
        return
    for name, value in run.global_state.items():
        if torch.is_floating_point(value):
            run.tail[name] += (value.double() - run.tail[name]) / run.tail_rounds
        else:
            run.tail[name] = value.clone()


def average_tail(run: RunState) -> None:
    """The final global model becomes the mean of the last rounds' models (stochastic weight
    averaging on the server). Why: on class-disjoint sites the global model swings from round to
    round as each site pulls towards its own classes; the mean sits in the flatter middle of those
    swings. Its BatchNorm statistics are no one's: the statistics pass recomputes them."""
    if run.tail is None or run.tail_rounds < 2:
        return
    run.global_state = {k: v.to(run.global_state[k].dtype) for k, v in run.tail.items()}
    logger.info("%s: the final model is the mean of the last %d rounds' global models", run.cfg.algorithm,
                run.tail_rounds)


def statistics_round(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """After the last round's aggregation: every eligible client runs the final global model over
    its own pixels without training (FedDiff: with its partner's outputs of that model) and sends
    only its BatchNorm running statistics; the server pools them (``aggregate_modality_aware``).

    Why: each client's statistics were gathered with its own local weights, and the average of
    weights is none of them — on the class-disjoint Houston sites the averaged statistics cost
    4 OA points against statistics of the final model. The pass's traffic and failures are
    part of the last round's record."""
    if not (run.cfg.statistics_pass and record.aggregated and norm_statistic_names(run.model)):
        return
    evaluate_round(run, record)  # the gain of the pass, in the history
    record.scores_before_statistics = dict(record.scores)
    # with an exchange, the partner outputs of the first pass still carry the old statistics (the
    # partner's branch runs in eval mode): a second pass sees the pooled ones, as the test pixels will
    for _ in range(2 if run.algorithm.exchanges_features else 1):
        statistics_pass_round(grid, run, record)


def statistics_pass_round(grid: Grid, run: RunState, record: RoundRecord) -> None:
    settings = {**record.settings, "train": {**record.settings["train"], "statistics_only": True}}
    sub = RoundRecord(record.round, record.lr, settings, list(run.eligible))
    for cid in sub.sampled:  # the statistics must be those of the exact final weights, not of a
        run.downlink.forget(cid)  # compressed copy: the first download of the pass goes dense
    encode_downloads(run, sub)
    if run.algorithm.exchanges_features:
        exchange_features(grid, run, sub)
    collect_updates(grid, run, sub)
    if run.cfg.secure:
        finite = [u for u in sub.updates if u.client_id in sub.secure_from]
        rejected: list[tuple[int, str]] = []
        if sub.secure_means:
            apply_secure_means(run, sub, record, 1.0)
        for key, value in sub.secure.items():  # the pass's sums count with the round's (its group sizes do not)
            if key != "group_sizes":
                record.secure[key] = record.secure.get(key, 0) + value
    else:
        finite, rejected = screen_updates(sub.updates, run.global_state, float("inf"))
        if finite:
            aggregate_updates(run, record, finite, 1.0)
    sub.statistics_from = [u.client_id for u in finite]
    merge_pass(record, sub, "statistics")
    record.rejected.extend(rejected)
    record.statistics_from = sub.statistics_from
    logger.info("%s: BatchNorm statistics of the final model pooled from %d of %d clients",
                run.cfg.algorithm, len(finite), len(sub.sampled))


def merge_pass(record: RoundRecord, sub: RoundRecord, stage: str) -> None:
    """A pass after the last round (statistics, calibration) counts with that round: its traffic
    (uploads named after the pass), failures, drops, waiting and client time."""
    for entry in sub.traffic:
        if entry["direction"] == "up" and entry["payload"] == "weights":
            entry["payload"] = stage
    record.traffic.extend(sub.traffic)
    record.failed.extend({**f, "stage": f"{stage} {f['stage']}"} for f in sub.failed)
    record.dropped.extend({**d, "stage": f"{stage} {d['stage']}"} for d in sub.dropped)
    record.wait += sub.wait
    for cid, seconds in sub.client_seconds.items():
        record.client_seconds[cid] = record.client_seconds.get(cid, 0.0) + seconds


def calibration_round(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """After the last round (and the statistics pass): every client whose features are those of
    the test pixels runs the final model over its pixels — FedDiff clients with their partner's
    relayed outputs of that model — and sends the per-class count, sum and outer-product sum of the
    last layer's inputs; the server pools them and retrains that layer on virtual features
    (``fedrs.federated.calibration``). Its traffic and failures count with the last round."""
    if run.cfg.calibration is None or not record.aggregated:
        return
    cfg = CalibrationConfig.from_dict(run.cfg.calibration)
    layer = run.algorithm.require_calibration_layer()
    evaluate_round(run, record)
    record.scores_before_calibration = dict(record.scores)
    settings = {**record.settings, "train": {**record.settings["train"], "calibration_only": True}}
    if cfg.dense_exchange:  # the statistics of features as a test pixel's are computed: without the codec's error
        settings["exchange_compression"] = None
    contributors = [c for c in run.eligible if run.algorithm.calibration_contributes(run.clients[c]["modalities"])]
    sub = RoundRecord(record.round, record.lr, settings, contributors)
    encode_downloads(run, sub, exact=True)  # the features must be those of the exact final weights
    if run.algorithm.exchanges_features:
        exchange_features(grid, run, sub)
    collect_updates(grid, run, sub)
    parts = [u.state for u in sub.updates if all(torch.isfinite(v).all() for v in u.state.values())]
    merge_pass(record, sub, "calibration")
    if not parts:
        logger.warning("%s: no client sent class statistics; the last layer is not calibrated", run.cfg.algorithm)
        return
    weight, bias = run.global_state[f"{layer}.weight"], run.global_state[f"{layer}.bias"]
    run.global_state[f"{layer}.weight"], run.global_state[f"{layer}.bias"], report = calibrate_layer(
        weight, bias, pool_statistics(parts), cfg, derive_seed(run.cfg.seed, 7_007, record.round))
    record.calibration = {"clients": float(len(parts)), **report}
    logger.info("%s: the last layer (%s) calibrated on %d virtual features of %d classes from %d clients' "
                "statistics (loss %.3f → %.3f)", run.cfg.algorithm, layer, int(report["virtual_features"]),
                int(report["classes"]), len(parts), report["loss_before"], report["loss_after"])


def check_calibration(cfg: FederatedConfig, algorithm: Algorithm) -> None:
    """Classifier calibration's requirements, before the first round."""
    CalibrationConfig.from_dict(cfg.calibration)
    algorithm.require_calibration_layer()
    if cfg.privacy or cfg.secure:
        raise ValueError("calibration with privacy or secure_aggregation: the clients' class statistics would reach "
                         "the server unprotected; set calibration: null")


def evaluate_round(run: RunState, record: RoundRecord) -> None:
    run.model.load_state_dict(run.global_state)
    report = run.algorithm.evaluate(run.model, run.test, record.settings["train"])
    record.scores = {k: float(v) for k, v in report.items() if isinstance(v, int | float) and k != "num_samples"}


def loss_growth(history: list[dict[str, Any]], rounds: int, min_rise: float = 0.05) -> int:
    """For how many consecutive rounds, up to the last, the training loss has risen — when that is
    at least ``rounds`` rounds and the loss rose by at least ``min_rise`` (relative) over them; else 0.
    Noise-level wobbles of a converged run are not a divergence."""
    losses = [r.get("train_loss") for r in history]
    grown = 0
    for before, after in zip(losses[-2::-1], losses[::-1], strict=False):
        if before is None or after is None or not after > before:
            break
        grown += 1
    if grown < rounds:
        return 0
    start, end = losses[-grown - 1], losses[-1]
    return grown if start and end / start - 1.0 >= min_rise else 0


def record_round(run: RunState, record: RoundRecord) -> dict[str, Any]:
    """The round's history row and traffic, the loss-trend warning, and the checkpoint."""
    cfg = run.cfg
    row = record.row()
    run.history.append(row)
    run.traffic.extend(record.traffic)
    grown = loss_growth(run.history, cfg.loss_growth_rounds)
    row["loss_growing_rounds"] = grown
    if grown:
        logger.warning(
            "%s: the training loss has grown for %d rounds in a row (%.4g → %.4g); a federated loss "
            "that climbs round after round is a divergence until shown otherwise",
            cfg.algorithm,
            grown,
            run.history[-grown - 1]["train_loss"],
            row["train_loss"],
        )
    headline = next(iter(record.scores.items()), ("score", float("nan")))
    logger.info(
        "%s round %d/%d: %d/%d updates used (%d failed, %d dropped, %d rejected), train loss %s, test %s %.4f",
        cfg.algorithm,
        record.round,
        cfg.num_rounds,
        len(record.accepted),
        len(record.sampled),
        len(record.failed),
        len(record.dropped),
        len(record.rejected),
        "–" if row["train_loss"] is None else f"{row['train_loss']:.4f}",
        *headline,
    )
    if cfg.checkpoint_dir:
        save_checkpoint(
            cfg.checkpoint_dir,
            {
                "round": record.round,
                "state": run.global_state,
                "rng": run.rng.bit_generator.state,
                "history": run.history,
                "traffic": run.traffic,
                "tail": run.tail,
                "tail_rounds": run.tail_rounds,
                "privacy_releases": run.privacy_releases,
                "config_digest": cfg.digest(),
            },
        )
    return row


@dataclass
class FailureWatch:
    """Stops a run whose failures are systematic: a client raising the same error in
    ``tolerance`` consecutive rounds it was sampled in, or every sampled client of one modality
    group (the clients holding the same modalities) failing or dropped in ``tolerance`` consecutive
    rounds. A single failure is survived; a bug is not averaged away."""

    tolerance: int | None
    clients: dict[int, dict[str, Any]]
    repeats: dict[int, tuple[str, int]] = field(default_factory=dict)  # client → (signature, count)
    group_streak: dict[tuple[str, ...], int] = field(default_factory=dict)

    def observe(self, record: RoundRecord) -> None:
        if not self.tolerance:
            return
        errors = {f["client_id"]: f["error"] for f in record.failed}
        lost = errors.keys() | {d["client_id"] for d in record.dropped}
        for cid in record.sampled:
            if cid not in errors:
                self.repeats.pop(cid, None)
                continue
            signature = error_signature(errors[cid])
            previous, count = self.repeats.get(cid, ("", 0))
            count = count + 1 if previous == signature else 1
            self.repeats[cid] = (signature, count)
            if count >= self.tolerance:
                raise SystematicFailure(
                    f"client {cid} ({'+'.join(self.clients[cid]['modalities'])}) failed with the same error in "
                    f"{count} consecutive rounds (failure_tolerance={self.tolerance}), up to round {record.round}; "
                    f"its error:\n{errors[cid]}"
                )
        groups: dict[tuple[str, ...], list[int]] = {}
        for cid in record.sampled:
            groups.setdefault(tuple(self.clients[cid]["modalities"]), []).append(cid)
        for group, members in groups.items():
            if all(c in lost for c in members):
                self.group_streak[group] = self.group_streak.get(group, 0) + 1
            else:
                self.group_streak[group] = 0
            if self.group_streak[group] >= self.tolerance:
                example = next((errors[c] for c in members if c in errors), "no reply within the round timeout")
                raise SystematicFailure(
                    f"every sampled client holding {'+'.join(group)} ({members}) failed or was dropped in "
                    f"{self.group_streak[group]} consecutive rounds (failure_tolerance={self.tolerance}), up to "
                    f"round {record.round}; the {'+'.join(group)} side of the model is not being trained. "
                    f"First error:\n{example}"
                )


# ----------------------------------------------------------------------------- the loop
def start_run(grid: Grid, cfg: FederatedConfig, test: dict[str, Any], expected_nodes: int) -> tuple[RunState, int]:
    """The run's state (fresh, or from the checkpoint when resuming) and its first round."""
    algorithm = get_algorithm(cfg.algorithm)
    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = algorithm.build_model(cfg.model)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(derive_seed(cfg.seed, 1))
    history: list[dict[str, Any]] = []
    traffic: list[dict[str, Any]] = []
    start_round = 1
    checkpoint = load_checkpoint(cfg.checkpoint_dir) if (cfg.checkpoint_dir and cfg.resume) else None
    if checkpoint is not None:
        if checkpoint["config_digest"] != cfg.digest():
            raise RuntimeError(
                f"the checkpoint in {cfg.checkpoint_dir} was made with other settings; remove it or set resume: false"
            )
        global_state, history, traffic = checkpoint["state"], checkpoint["history"], checkpoint["traffic"]
        rng.bit_generator.state = checkpoint["rng"]
        start_round = int(checkpoint["round"]) + 1
        logger.info("Resuming %s from the checkpoint of round %d", cfg.algorithm, checkpoint["round"])
    nodes = wait_for_nodes(grid, expected_nodes, cfg.node_wait_timeout)
    clients = discover_clients(grid, nodes, {**cfg.settings(), "round": 0})
    eligible = sorted(c for c, info in clients.items() if algorithm.is_eligible(info["modalities"]))
    if cfg.privacy:
        PrivacyConfig.from_dict(cfg.privacy)  # a bad privacy block fails before the first round
    if cfg.secure:
        check_secure(cfg, algorithm)
    if cfg.calibration is not None:
        check_calibration(cfg, algorithm)
    if cfg.weighting not in ("samples", "equal"):
        raise ValueError(f"federated.weighting is {cfg.weighting!r}; expected samples or equal")
    if len(eligible) < cfg.min_clients:
        raise RuntimeError(f"{len(eligible)} clients can train {cfg.algorithm}; min_clients is {cfg.min_clients}")
    downlink = Downlink(CodecConfig.from_dict(cfg.downlink_compression) if cfg.downlink_compression else None)
    run = RunState(
        cfg,
        algorithm,
        model,
        global_state,
        rng,
        clients,
        eligible,
        eval_subset(test, cfg.eval_samples, cfg.seed),
        downlink,
        history,
        traffic,
    )
    if checkpoint is not None:
        run.tail, run.tail_rounds = checkpoint.get("tail"), int(checkpoint.get("tail_rounds", 0))
        run.privacy_releases = list(checkpoint.get("privacy_releases", []))
    return run, start_round


def check_secure(cfg: FederatedConfig, algorithm: Algorithm) -> None:
    """Secure aggregation's requirements, before the first round."""
    SecureAggregationConfig.from_dict(cfg.secure_aggregation or {})
    if type(algorithm).aggregate is not ModalityAwareAlgorithm.aggregate:
        raise ValueError(f"secure_aggregation: {cfg.algorithm} does not aggregate by (modality-aware) weighted means, "
                         "the only aggregate a secure sum gives")
    if cfg.compression:
        raise ValueError("secure_aggregation with compression: uploads are summed as masked integers and cannot be "
                         "low-rank coded; set compression: null (downlink_compression may stay)")
    if cfg.privacy and PrivacyConfig.from_dict(cfg.privacy).clipping != "client":
        raise ValueError("secure_aggregation with privacy.clipping: server — the server never holds a single update "
                         "to clip; set privacy.clipping: client")


def run_round(grid: Grid, run: RunState, rnd: int) -> RoundRecord:
    record = configure_round(run, rnd)
    if run.algorithm.exchanges_features:
        exchange_features(grid, run, record)
    collect_updates(grid, run, record)
    aggregate_round(run, record)
    accumulate_tail(run, rnd)
    if rnd == run.cfg.num_rounds:
        average_tail(run)
        statistics_round(grid, run, record)
        calibration_round(grid, run, record)
    evaluate_round(run, record)
    return record


def run_rounds(grid: Grid, cfg: FederatedConfig, test: dict[str, Any], expected_nodes: int,
               on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Drive ``cfg.num_rounds`` rounds over ``grid``; returns state, history, traffic and clients.
    ``on_round`` sees each round's history row (the deployment engine reports progress with it)."""
    run, start_round = start_run(grid, cfg, test, expected_nodes)
    watch = FailureWatch(cfg.failure_tolerance, run.clients)
    rounds = tqdm(
        range(start_round, cfg.num_rounds + 1),
        desc=f"{cfg.algorithm} rounds",
        unit="round",
        initial=start_round - 1,
        total=cfg.num_rounds,
        leave=False,
    )
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
        "clients": {
            str(c): {"modalities": list(i["modalities"]), "num_samples": i["num_samples"]}
            for c, i in run.clients.items()
        },
    }
