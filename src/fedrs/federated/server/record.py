"""One round as it happens (``RoundRecord``) and its history row: who was asked, what went each
way, who failed or was dropped and why, what was accepted, the scores and what each pass added."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from fedrs.federated.aggregation import ClientUpdate, State
from fedrs.federated.privacy import DETERMINISTIC
from fedrs.federated.server.messaging import client_error

# what clients report besides their training metrics (averaged per round into train_<key>)
NOT_TRAINING_METRICS = {"train_loss", "num_samples", "client_id", "bytes_dense", "bytes_sent", "compute_seconds",
                        "update_norm"}
LOST_REPLY = "no reply within the round timeout"


@dataclass
class Download:
    content: dict[str, Any]
    bytes_dense: int
    bytes_sent: int
    decoded: State  # what the client will hold after decoding: the reference of its upload


@dataclass
class RoundRecord:
    """One round as it happens; ``row()`` is its history entry."""

    round: int
    lr: float
    settings: dict[str, Any]
    sampled: list[int]
    operation: str = "train"  # what the clients are asked for: train | statistics | calibration | probe |
                              # validation
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
    record_privacy: dict[str, Any] = field(default_factory=dict)  # record-level DP: ε so far and its unit
    exchange_protection: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # (clipped fraction,
                                                                                   # noise std, median norm)
    scores_before_statistics: dict[str, float] = field(default_factory=dict)
    scores_before_calibration: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)  # the calibration pass: clients, classes, losses
    scores_before_temperature: dict[str, float] = field(default_factory=dict)
    temperature: dict[str, Any] = field(default_factory=dict)  # temperature scaling: T, whether inside its grid
    validation: dict[str, float] = field(default_factory=dict)  # clients' validation: who scored, how many pixels
    secure_means: State = field(default_factory=dict)  # secure aggregation: the unmasked mean contributions
    secure_from: dict[int, int] = field(default_factory=dict)  # client → secure sums it is in
    secure_members: dict[str, int] = field(default_factory=dict)  # tensor → clients in its secure sum
    secure_weights: dict[str, dict[int, float]] = field(default_factory=dict)  # tensor → its sum's client weights
    secure: dict[str, Any] = field(default_factory=dict)  # secure sums run, failed, their seconds

    @property
    def message_type(self) -> str:
        """Flower's message type of the operation (``fedrs.federated.client_app`` has a handler each)."""
        return "train" if self.operation == "train" else f"query.{self.operation}"

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
            self.dropped.append({"client_id": cid, "stage": stage, "reason": LOST_REPLY})
            return False
        if reply.has_error():
            self.failed.append({"client_id": cid, "stage": stage, "error": client_error(reply.error.reason or "")})
            return False
        seconds = reply.content.metric_records["metrics"].get("compute_seconds", 0.0)
        self.client_seconds[cid] = self.client_seconds.get(cid, 0.0) + float(str(seconds))
        return True

    def log_traffic(self, cid: int, direction: str, payload: str, dense: int, sent: int) -> None:
        self.traffic.append({"round": self.round, "client_id": cid, "direction": direction, "payload": payload,
                             "bytes_dense": int(dense), "bytes_sent": int(sent)})

    def row(self) -> dict[str, Any]:
        total = time.perf_counter() - self.started
        return {
            "round": self.round,
            "sampled": self.sampled,
            "accepted": [u.client_id for u in self.accepted],
            "failed": [{"client_id": f["client_id"], "stage": f["stage"],
                        "reason": (f["error"].strip().splitlines() or ["no message"])[-1][:300]} for f in self.failed],
            "dropped": self.dropped,
            "rejected": [{"client_id": c, "reason": r} for c, r in self.rejected],
            "aggregated": self.aggregated,
            **self.training_summary(),
            "lr": self.lr,
            **{f"val_{k}": v for k, v in self.scores.items()},
            **self.traffic_sums(),
            "seconds": total,
            "wait_seconds": self.wait,
            "server_seconds": total - self.wait,
            "client_seconds": sum(self.client_seconds.values()),
            "client_seconds_max": max(self.client_seconds.values(), default=0.0),
            "statistics_from": self.statistics_from,
            **self.pass_summary(),
            **self.protection_summary(),
        }

    def training_summary(self) -> dict[str, Any]:
        """The accepted updates' sample-weighted training loss and reported metrics (``train_<key>``)."""
        weight = sum(u.num_samples for u in self.accepted)
        if not weight or not any("train_loss" in u.metrics for u in self.accepted):  # none, or DP kept them home
            return {"train_loss": None}
        reported = sorted({k for u in self.accepted for k in u.metrics} - NOT_TRAINING_METRICS)
        return {"train_loss": sum(float(u.metrics.get("train_loss", 0.0)) * u.num_samples for u in self.accepted)
                / weight,
                **{f"train_{k}": sum(float(u.metrics.get(k, 0.0)) * u.num_samples for u in self.accepted) / weight
                   for k in reported}}

    def traffic_sums(self) -> dict[str, int]:
        """Bytes each way of training (and its passes), and — apart, so that what a method costs to
        train stays comparable — of the clients' validation (both ways)."""
        training = [t for t in self.traffic if not t["payload"].startswith("validation")]
        scoring = [t for t in self.traffic if t["payload"].startswith("validation")]
        return {**{f"{key}{suffix}": sum(t[field_] for t in training if t["direction"] == direction)
                   for key, direction in (("bytes_down", "down"), ("bytes_up", "up"))
                   for suffix, field_ in (("", "bytes_sent"), ("_dense", "bytes_dense"))},
                **({"bytes_validation": sum(t["bytes_sent"] for t in scoring),
                    "bytes_validation_dense": sum(t["bytes_dense"] for t in scoring)} if scoring else {})}

    def pass_summary(self) -> dict[str, Any]:
        """What the passes after the last round changed: scores before each, calibration's report, the
        temperature."""
        return {**{f"val_{k}_before_statistics": v for k, v in self.scores_before_statistics.items()},
                **{f"val_{k}_before_calibration": v for k, v in self.scores_before_calibration.items()},
                **{f"calibration_{k}": v for k, v in self.calibration.items()},
                **{f"val_{k}_before_temperature": v for k, v in self.scores_before_temperature.items()},
                **self.temperature,
                **{f"validation_{k}": v for k, v in self.validation.items()}}

    def protection_summary(self) -> dict[str, Any]:
        """DP's release, SecAgg+'s sums and the exchange protection, as far as the round used them."""
        out: dict[str, Any] = {}
        if self.privacy:
            out.update({"dp_epsilon": self.privacy["epsilon"], "dp_noise_std": self.privacy["noise_std_max"],
                        "dp_unit": self.privacy["unit"]})
            if not self.privacy["noise_std_max"]:  # no noise, no guarantee: the norms are worth showing (tuning C)
                out.update({"dp_clipped": self.privacy["clipped"],
                            "dp_update_norm_median": float(np.median(self.privacy["update_norms"]))})
        if self.record_privacy:
            out.update({"dp_record_epsilon": self.record_privacy["epsilon"],
                        "dp_record_unit": self.record_privacy["unit"]})
        out.update({f"secagg_{k}": v for k, v in self.secure.items()})
        if self.relayed:  # intermediate outputs of the clients' pixels crossed, outside any DP accountant
            out["relayed_outputs"] = len(self.relayed)
        if self.exchange_protection:
            # the clipped fraction and the norms (for choosing C) are data-dependent: none under noised DP
            clipped = [v[0] for v in self.exchange_protection.values() if np.isfinite(v[0])]
            norms = [v[2] for v in self.exchange_protection.values() if np.isfinite(v[2])]
            out.update({"exchange_noise_std": max(v[1] for v in self.exchange_protection.values()),
                        **({"exchange_clipped_fraction": float(np.mean(clipped))} if clipped else {}),
                        **({"exchange_norm_median": float(np.median(norms))} if norms else {})})
        deterministic = [self.privacy.get("noise"), self.record_privacy.get("noise"),
                         DETERMINISTIC if (self.exchange_protection and (self.settings.get("exchange_privacy") or {})
                                           .get("deterministic_noise")) else None]
        if DETERMINISTIC in deterministic:  # test noise: anyone with the run seed can remove it
            out["noise"] = DETERMINISTIC
        return out


def merge_pass(record: RoundRecord, sub: RoundRecord, stage: str) -> None:
    """A pass (after the last round, or a round's validation) counts with its round: its traffic
    (uploads named after the pass), failures, drops, waiting, client time and secure sums (not their
    group sizes)."""
    for entry in sub.traffic:
        if entry["direction"] == "up" and entry["payload"] == "weights":
            entry["payload"] = stage
    record.traffic.extend(sub.traffic)
    record.failed.extend({**f, "stage": f"{stage} {f['stage']}"} for f in sub.failed)
    record.dropped.extend({**d, "stage": f"{stage} {d['stage']}"} for d in sub.dropped)
    record.wait += sub.wait
    for cid, seconds in sub.client_seconds.items():
        record.client_seconds[cid] = record.client_seconds.get(cid, 0.0) + seconds
    for key, value in sub.secure.items():
        if key != "group_sizes":
            record.secure[key] = record.secure.get(key, 0) + value
