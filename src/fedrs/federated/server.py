"""The server's round loop, shared by every algorithm and by both Flower engines.

Per round: sample clients (seeded), send each the global tensors it can use, collect replies within
the timeout, drop clients that failed or did not answer, reject non-finite or outlying updates,
aggregate if at least ``min_clients`` updates survive, score the global model on the test pixels,
log traffic, and checkpoint (global model, RNG state, history) so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from tqdm.auto import tqdm

from fedrs.config import from_mapping
from fedrs.federated.aggregation import ClientUpdate, screen_updates
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.checkpoint import load_checkpoint, save_checkpoint
from fedrs.federated.codec import CodecConfig, ErrorFeedback
from fedrs.federated.local import derive_seed, lr_at_round
from fedrs.federated.wire import pack_tensors, payload_bytes, unpack_tensors, unpack_update

logger = logging.getLogger(__name__)

# settings that do not change the result, so a checkpoint made with other values can be resumed
_RESUMABLE = {"resume", "stop_after_round", "checkpoint_dir", "round_timeout", "node_wait_timeout", "faults"}


class RunInterrupted(RuntimeError):
    """Raised after the checkpoint of ``stop_after_round``: a deliberate, resumable stop."""


@dataclass
class FederatedConfig:
    algorithm: str
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    num_rounds: int = 5
    clients_per_round: int | None = None   # None: every eligible client
    min_clients: int = 1
    seed: int = 0
    partition_dir: str = ""
    round_timeout: float | None = None     # seconds to wait for replies; None: wait for all
    lr_schedule: str = "cosine"           # per-round learning rate: cosine | constant
    outlier_factor: float = 10.0
    max_update_norm: float | None = None
    eval_samples: int | None = None        # test pixels scored each round (seeded subset); None: all
    checkpoint_dir: str | None = None
    resume: bool = False
    stop_after_round: int | None = None
    node_wait_timeout: float = 120.0
    faults: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] | None = None  # codec settings for uploaded updates; None: dense
    exchange_compression: dict[str, Any] | None = None  # codec for exchanged features; None: dense
    downlink_compression: dict[str, Any] | None = None  # global weights as compressed deltas; None: dense
    client_data_dirs: list[str] = field(default_factory=list)  # more per-client files (e.g. features)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FederatedConfig":
        return from_mapping(cls, d, label="federated config")

    def digest(self) -> str:
        relevant = {k: v for k, v in asdict(self).items() if k not in _RESUMABLE}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def wait_for_nodes(grid: Any, expected: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {expected} Flower nodes connected within {timeout:.0f} s")
        time.sleep(0.1)
        nodes = list(grid.get_node_ids())
    return nodes


def _message(content: dict[str, Any], settings: dict[str, Any], node: int, kind: str, rnd: int) -> Message:
    record = RecordDict({**content, "config": ConfigRecord({"settings": json.dumps(settings)})})
    return Message(record, dst_node_id=node, message_type=kind, group_id=str(rnd))


def discover_clients(grid: Any, nodes: list[int], settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Ask every node which partition it holds: client id → {node, modalities, num_samples}."""
    replies = grid.send_and_receive([_message({}, settings, n, "query", 0) for n in nodes])
    clients: dict[int, dict[str, Any]] = {}
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} could not load its partition: {reply.error.reason}")
        info = reply.content["info"]
        cid = int(info["client_id"])
        if cid in clients:
            raise RuntimeError(f"two nodes hold the partition of client {cid}")
        clients[cid] = {"node": reply.metadata.src_node_id, "modalities": tuple(str(info["modalities"]).split(",")),
                        "num_samples": int(info["num_samples"]), "site": int(info.get("site", -1))}
    return clients


def eval_subset(test: dict[str, Any], n: int | None, seed: int) -> dict[str, Any]:
    total = len(test["labels"])
    if not n or n >= total:
        return test
    idx = np.sort(np.random.default_rng(derive_seed(seed, 7_777)).choice(total, n, replace=False))
    return {k: (v[idx] if isinstance(v, np.ndarray) and len(v) == total else v) for k, v in test.items()}


def _sample(rng: np.random.Generator, eligible: list[int], k: int, clients: dict[int, dict[str, Any]],
            by_site: bool) -> list[int]:
    """``k`` clients uniformly (seeded); with ``by_site``, whole sites so both holders take part."""
    if not by_site:
        return sorted(int(c) for c in rng.choice(eligible, size=k, replace=False))
    sites = sorted({clients[c]["site"] for c in eligible})
    per_site = max(1, round(k * len(sites) / max(len(eligible), 1)))
    chosen = set(int(s) for s in rng.choice(sites, size=min(per_site, len(sites)), replace=False))
    return sorted(c for c in eligible if clients[c]["site"] in chosen)


def _exchange(grid: Any, settings: dict[str, Any], clients: dict[int, dict[str, Any]], sampled: list[int],
              weights: dict[int, dict[str, Any]], rnd: int, cfg: FederatedConfig,
              dropped: list[dict[str, Any]], traffic: list[dict[str, Any]], timing: "RoundTiming",
              ) -> tuple[list[int], dict[int, tuple[Any, Any]]]:
    """Collect each client's encoded branch outputs and relay them, untouched, to its site partner.

    The server never decodes them; a client whose partner could not deliver is dropped from the round.
    """
    messages = [_message(dict(weights[c]), settings, clients[c]["node"], "query.exchange", rnd) for c in sampled]
    replies = timing.send_and_receive(grid, messages, cfg.round_timeout)
    delivered: dict[int, tuple[Any, Any]] = {}
    for cid in sampled:
        reply = replies.get(clients[cid]["node"])
        if reply is None or reply.has_error():
            reason = "no reply within the round timeout" if reply is None else reply.error.reason.splitlines()[-1][:300]
            dropped.append({"client_id": cid, "reason": f"feature exchange failed: {reason}"})
            continue
        metrics = reply.content["metrics"]
        timing.client(cid, float(metrics.get("compute_seconds", 0.0)))
        delivered[cid] = (reply.content["arrays"], reply.content["codec"])
        traffic.append({"round": rnd, "client_id": cid, "direction": "up", "payload": "features",
                        "bytes_dense": int(metrics["bytes_dense"]), "bytes_sent": int(metrics["bytes_sent"])})
    relayed, kept = {}, []
    for cid in sampled:
        partners = [p for p in delivered if p != cid and clients[p]["site"] == clients[cid]["site"]]
        if cid not in delivered or not partners:
            if cid in delivered:
                dropped.append({"client_id": cid, "reason": "its site partner delivered no features"})
            continue
        partner = partners[0]
        relayed[cid] = delivered[partner]
        metrics = replies[clients[partner]["node"]].content["metrics"]
        traffic.append({"round": rnd, "client_id": cid, "direction": "down", "payload": "features",
                        "bytes_dense": int(metrics["bytes_dense"]), "bytes_sent": int(metrics["bytes_sent"])})
        kept.append(cid)
    return kept, relayed


@dataclass
class RoundTiming:
    """Where a round's wall time went: waiting on Flower for replies, the clients' own compute (as they
    report it: data, local update, codec) and the server's own work (the rest). Run one client at a
    time and ``wait - client`` is what the framework itself costs (messaging, serialisation, Ray)."""

    started: float = field(default_factory=time.perf_counter)
    wait: float = 0.0
    clients: dict[int, float] = field(default_factory=dict)

    def send_and_receive(self, grid: Any, messages: list[Message], timeout: float | None) -> dict[int, Message]:
        t0 = time.perf_counter()
        replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=timeout)}
        self.wait += time.perf_counter() - t0
        return replies

    def client(self, cid: int, seconds: float) -> None:
        self.clients[cid] = self.clients.get(cid, 0.0) + seconds

    def row(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        return {"seconds": total, "wait_seconds": self.wait, "server_seconds": total - self.wait,
                "client_seconds": sum(self.clients.values()), "client_seconds_max": max(self.clients.values(), default=0.0)}


@dataclass
class Downlink:
    """What the server believes each client holds, so it can send compressed deltas against it."""

    codec: CodecConfig | None
    references: dict[int, tuple[int, dict[str, torch.Tensor]]] = field(default_factory=dict)
    feedback: dict[int, ErrorFeedback] = field(default_factory=dict)

    def encode(self, cid: int, state: dict[str, torch.Tensor], rnd: int
               ) -> tuple[dict[str, Any], int, int, dict[str, torch.Tensor]]:
        """Records to send, dense bytes, bytes as sent, and the weights the client will decode."""
        if self.codec is None or cid not in self.references:
            self.references[cid] = (rnd, state)
            size = payload_bytes(state)
            return {"arrays": ArrayRecord.from_torch_state_dict(state)}, size, size, state
        ref_round, reference = self.references[cid]
        arrays, consts, dense, sent = pack_tensors(state, self.codec, reference,
                                                   self.feedback.setdefault(cid, ErrorFeedback()))
        decoded = unpack_tensors(arrays, consts, reference)  # bit-identical to what the client decodes
        self.references[cid] = (rnd, decoded)
        return {"arrays": arrays, "down_codec": consts, "reference": ConfigRecord({"round": ref_round})}, dense, sent, decoded

    def forget(self, cid: int) -> None:
        """A client that failed may not hold what we think: its next download goes dense."""
        self.references.pop(cid, None)
        self.feedback.pop(cid, None)


def run_rounds(grid: Any, cfg: FederatedConfig, test: dict[str, Any], expected_nodes: int) -> dict[str, Any]:
    """Drive ``cfg.num_rounds`` rounds over ``grid``; returns state, history, traffic and clients."""
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

    base = {"algorithm": cfg.algorithm, "model": cfg.model, "train": cfg.train, "seed": cfg.seed,
            "partition_dir": cfg.partition_dir, "faults": cfg.faults, "compression": cfg.compression,
            "exchange_compression": cfg.exchange_compression, "client_data_dirs": cfg.client_data_dirs}
    exchanges = bool(getattr(algorithm, "exchanges_features", False))
    nodes = wait_for_nodes(grid, expected_nodes, cfg.node_wait_timeout)
    clients = discover_clients(grid, nodes, {**base, "round": 0})
    eligible = sorted(c for c, info in clients.items() if algorithm.is_eligible(info["modalities"]))
    if len(eligible) < cfg.min_clients:
        raise RuntimeError(f"{len(eligible)} clients can train {cfg.algorithm}; min_clients is {cfg.min_clients}")
    test_round = eval_subset(test, cfg.eval_samples, cfg.seed)
    downlink = Downlink(CodecConfig.from_dict(cfg.downlink_compression) if cfg.downlink_compression else None)
    per_round = min(cfg.clients_per_round or len(eligible), len(eligible))

    rounds = tqdm(range(start_round, cfg.num_rounds + 1), desc=f"{cfg.algorithm} rounds", unit="round",
                  initial=start_round - 1, total=cfg.num_rounds, leave=False)
    for rnd in rounds:
        timing = RoundTiming()
        sampled = _sample(rng, eligible, per_round, clients, by_site=exchanges)
        lr = lr_at_round(float(cfg.train.get("lr", 1e-3)), rnd, cfg.num_rounds, cfg.lr_schedule)
        settings = {**base, "round": rnd, "train": {**cfg.train, "lr": lr}}
        weights, down, sent_to = {}, {}, {}
        for cid in sampled:
            state = {k: global_state[k] for k in sorted(algorithm.client_keys(model, clients[cid]["modalities"]))}
            weights[cid], dense, sent, sent_to[cid] = downlink.encode(cid, state, rnd)
            down[cid] = (dense, sent)
        dropped: list[dict[str, Any]] = []
        relayed: dict[int, tuple[Any, Any]] = {}
        if exchanges:  # the weights travel once, with the exchange; the train message reuses them
            kept, relayed = _exchange(grid, settings, clients, sampled, weights, rnd, cfg, dropped, traffic, timing)
            for cid in set(sampled) - set(kept):
                downlink.forget(cid)
            sampled = kept
        messages = []
        for cid in sampled:
            content = {} if exchanges else dict(weights[cid])
            if cid in relayed:
                content["partner"], content["partner_codec"] = relayed[cid]
            messages.append(_message(content, settings, clients[cid]["node"], "train", rnd))
        replies = timing.send_and_receive(grid, messages, cfg.round_timeout)

        updates, up = [], {}
        for cid in sampled:
            reply = replies.get(clients[cid]["node"])
            if reply is None or reply.has_error():
                reason = "no reply within the round timeout" if reply is None else reply.error.reason.splitlines()[-1][:300]
                dropped.append({"client_id": cid, "reason": reason})
                downlink.forget(cid)
            else:
                metrics = dict(reply.content["metrics"])
                timing.client(cid, float(metrics.get("compute_seconds", 0.0)))
                up[cid] = (int(metrics.get("bytes_dense", 0)), int(metrics.get("bytes_sent", 0)))
                state = unpack_update(reply.content["arrays"], reply.content["codec"], sent_to[cid]) \
                    if cfg.compression else dict(reply.content["arrays"].to_torch_state_dict())
                updates.append(ClientUpdate(cid, state, clients[cid]["num_samples"], clients[cid]["modalities"], metrics))
        accepted, rejected = screen_updates(updates, global_state, cfg.outlier_factor, cfg.max_update_norm)
        aggregated = len(accepted) >= cfg.min_clients
        if aggregated:
            global_state = algorithm.aggregate(global_state, accepted)
        else:
            logger.warning("round %d: %d usable updates, below min_clients=%d; global model kept",
                           rnd, len(accepted), cfg.min_clients)
        model.load_state_dict(global_state)
        scores = {k: v for k, v in algorithm.evaluate(model, test_round, settings["train"]).items()
                  if isinstance(v, (int, float)) and k != "num_samples"}
        weight = sum(u.num_samples for u in accepted)
        train_loss = sum(u.metrics.get("train_loss", 0.0) * u.num_samples for u in accepted) / weight if weight else None
        for cid in down:  # every client the weights went to, including any the round later dropped
            traffic.append({"round": rnd, "client_id": cid, "direction": "down", "payload": "weights",
                            "bytes_dense": down[cid][0], "bytes_sent": down[cid][1]})
            if cid in up:
                traffic.append({"round": rnd, "client_id": cid, "direction": "up", "payload": "weights",
                                "bytes_dense": up[cid][0], "bytes_sent": up[cid][1]})
        features = [t for t in traffic if t["round"] == rnd and t["payload"] == "features"]
        row = {
            "round": rnd, "sampled": sampled, "accepted": [u.client_id for u in accepted],
            "dropped": dropped, "rejected": [{"client_id": c, "reason": r} for c, r in rejected],
            "aggregated": aggregated, "train_loss": train_loss, "lr": lr,
            **{f"test_{k}": v for k, v in scores.items()},
            "bytes_down": int(sum(sent for _, sent in down.values())) + sum(t["bytes_sent"] for t in features if t["direction"] == "down"),
            "bytes_down_dense": int(sum(dense for dense, _ in down.values())) + sum(t["bytes_dense"] for t in features if t["direction"] == "down"),
            "bytes_up": int(sum(sent for _, sent in up.values())) + sum(t["bytes_sent"] for t in features if t["direction"] == "up"),
            "bytes_up_dense": int(sum(dense for dense, _ in up.values())) + sum(t["bytes_dense"] for t in features if t["direction"] == "up"),
            **timing.row(),
        }
        history.append(row)
        headline = next(iter(scores.items()), ("score", float("nan")))
        rounds.set_postfix({headline[0]: f"{headline[1]:.3f}"})
        logger.info("%s round %d/%d: %d/%d updates used (%d dropped, %d rejected), test %s %.4f",
                    cfg.algorithm, rnd, cfg.num_rounds, len(accepted), len(sampled), len(dropped), len(rejected),
                    *headline)
        if cfg.checkpoint_dir:
            save_checkpoint(cfg.checkpoint_dir, {"round": rnd, "state": global_state, "rng": rng.bit_generator.state,
                                                 "history": history, "traffic": traffic, "config_digest": cfg.digest()})
        if cfg.stop_after_round == rnd and rnd < cfg.num_rounds:
            raise RunInterrupted(f"stopped after round {rnd} as requested (stop_after_round); resume to continue")
    rounds.close()
    return {"state": global_state, "history": history, "traffic": traffic,
            "clients": {str(c): {"modalities": list(i["modalities"]), "num_samples": i["num_samples"]} for c, i in clients.items()}}
