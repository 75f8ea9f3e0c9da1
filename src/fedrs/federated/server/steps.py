"""The steps of one round, each a function over the run and the round's record (tests drive them
against a fake grid): configure (sample, learning rate, downloads), collect the updates, aggregate
— and the tail average of the last rounds (the round's validation: ``validation``). What an
algorithm adds between configure and collect is its round protocol's (``protocol``)."""

from __future__ import annotations

import logging

import torch
from flwr.serverapp import Grid

from fedrs.federated.local import lr_at_round
from fedrs.federated.server.messaging import make_message, payload_counts
from fedrs.federated.server.record import Download, RoundRecord
from fedrs.federated.server.state import RunState

logger = logging.getLogger(__name__)


def configure_round(run: RunState, rnd: int) -> RoundRecord:
    """Sample the round's clients and encode each one's download of the global weights."""
    cfg = run.cfg
    sampled = run.protocol.sample(run.rng, run.eligible, run.per_round, run.clients)
    lr = lr_at_round(float(cfg.train.get("lr", 1e-3)), rnd, cfg.num_rounds, cfg.lr_schedule)
    settings = {**cfg.settings(), "round": rnd, "train": {**cfg.train, "lr": lr}}
    record = RoundRecord(rnd, lr, settings, sampled)
    encode_downloads(run, record)
    return record


def encode_downloads(run: RunState, record: RoundRecord, exact: bool = False, aside: bool = False,
                     payload: str = "weights") -> None:
    """Each sampled client's download of the global weights it holds a part in; ``exact``: the
    client decodes exactly the global weights (only what changed since its last download travels);
    ``aside``: it scores them and keeps training from its own copy (``Downlink.encode``)."""
    for cid in record.sampled:
        keys = sorted(run.algorithm.client_keys(run.model, run.clients[cid]["modalities"]))
        state = {k: run.global_state[k] for k in keys}
        content, dense, sent, decoded = run.downlink.encode(cid, state, record.round, exact, aside)
        record.downloads[cid] = Download(content, dense, sent, decoded)
        record.log_traffic(cid, "down", payload, dense, sent)


def collect_updates(grid: Grid, run: RunState, record: RoundRecord) -> None:
    """Ask the round's remaining participants for their operation (``record.operation``: a local
    update, or a pass's statistics) and turn their replies into updates (``run.aggregator``:
    decoded, or held on the clients for the secure sums)."""
    cfg, clients = run.cfg, run.clients
    participants = record.participants
    messages = [make_message(run.protocol.update_content(record, cid), record.settings, clients[cid]["node"],
                             record.message_type, record.round) for cid in participants]
    replies = record.send_and_receive(grid, messages, cfg.round_timeout)
    for cid in participants:
        reply = replies.get(clients[cid]["node"])
        if not record.note_reply(cid, reply, "train"):  # the stage a pass's failures are named by
            continue
        assert reply is not None
        record.updates.append(run.aggregator.update_from_reply(run, record, cid, reply))
        record.log_traffic(cid, "up", "weights", *payload_counts(reply))
    run.aggregator.after_replies(grid, run, record)
    if record.operation == "validation":  # its downloads were set aside: what the client trains from is intact
        return
    for entry in record.failed + record.dropped:  # it may not hold what we sent: dense next time
        run.downlink.forget(entry["client_id"])


def aggregate_round(run: RunState, record: RoundRecord) -> None:
    """Screen the updates and, with at least ``min_clients`` accepted, aggregate them."""
    cfg = run.cfg
    record.accepted, record.rejected = run.aggregator.screen(run, record)
    record.aggregated = len(record.accepted) >= cfg.min_clients and run.aggregator.ready(record)
    if record.aggregated:
        run.aggregator.apply(run, record, record, record.accepted, len(record.sampled) / max(len(run.eligible), 1))
    else:
        logger.warning("round %d: %d usable updates, below min_clients=%d; global model kept", record.round,
                       len(record.accepted), cfg.min_clients)


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
