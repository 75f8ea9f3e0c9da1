"""FedDiff's round protocol on the server: whole sites are sampled (a client trains only with its
partner's outputs), each round opens with the partner relay, and the statistics pass runs twice.

The relay: every sampled client gets its download of the global weights with an ``exchange``
request and replies with its encoded branch outputs; the server hands them, untouched and never
decoded, to the client holding the other modality of the same site, inside that client's ``train``
request. A client whose partner delivered nothing is dropped from the round."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from fedrs.federated.server.messaging import make_message, payload_counts
from fedrs.federated.server.protocol import RoundProtocol
from fedrs.federated.server.record import RoundRecord
from fedrs.federated.server.state import RunState


class PartnerRelay(RoundProtocol):
    # with an exchange, the partner outputs of the first pass still carry the old statistics (the
    # partner's branch runs in eval mode): a second pass sees the pooled ones, as the test pixels will
    statistics_passes = 2
    # a client's pixels reach its partner's update through the relayed outputs and the shared labels,
    # and a client without its partner delivers nothing: the unit DP can protect is the site, whose two
    # clipped updates move the released sums by up to 2C (the accountant sees σ/2 per release)
    privacy_unit = "site (its two organisations together)"
    sensitivity = 2.0
    # a site's pixel is a record at both of its organisations (each modality's patch, the same label)
    record_unit = "pixel of a site (its patches at both organisations and its label)"

    def sample(self, rng: np.random.Generator, eligible: list[int], k: int,
               clients: dict[int, dict[str, Any]]) -> list[int]:
        """Whole sites, as many as ``k`` clients' share of them, so both holders of a site take part."""
        sites = sorted({clients[c]["site"] for c in eligible})
        per_site = max(1, round(k * len(sites) / max(len(eligible), 1)))
        chosen = {int(s) for s in rng.choice(sites, size=min(per_site, len(sites)), replace=False)}
        return sorted(c for c in eligible if clients[c]["site"] in chosen)

    def record_groups(self, run: RunState) -> list[list[int]]:
        """The two organisations of each site: one pixel's records at both spend one budget."""
        sites: dict[Any, list[int]] = {}
        for c in run.eligible:
            sites.setdefault(run.clients[c]["site"], []).append(c)
        return list(sites.values())

    def before_updates(self, grid: Grid, run: RunState, record: RoundRecord) -> None:
        exchange_features(grid, run, record)

    def pixel_senders(self, run: RunState, record: RoundRecord) -> list[int]:
        """One client per site (the lowest id whose partner's outputs arrived): both members hold the
        same fused features of the same pixels, so a second sender would count every pixel twice."""
        chosen: dict[Any, int] = {}
        for cid in sorted(record.relayed):
            chosen.setdefault(run.clients[cid]["site"], cid)
        return sorted(chosen.values())

    def update_content(self, record: RoundRecord, cid: int) -> dict[str, Any]:
        """The partner's outputs only: the weights travelled with the exchange request."""
        content: dict[str, Any] = {}
        if cid in record.relayed:
            content["partner"], content["partner_codec"] = record.relayed[cid]
        return content


def exchange_features(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """Collect each sampled client's encoded branch outputs (its weights travel with this message)
    and relay them to its site partner (``record.relayed``); drop a client whose partner could not
    deliver."""
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
                record.exchange_protection[cid] = (float(str(metrics.get("exchange_clipped_fraction", "nan"))),
                                                   float(str(metrics["exchange_noise_std"])),
                                                   float(str(metrics.get("exchange_norm_median", "nan"))))
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
