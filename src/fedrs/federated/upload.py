"""The way up of a client's tensors as composable steps, chosen once per message from the run's
settings (``upload_path``): optional client-side clipping (DP), the fault-injection hook, the
metrics a client may publish, then exactly one sender — held for Flower's SecAgg+ sums, through
the compression codec (with error feedback kept in node state), or dense.

Each step is a plain function of an ``Outgoing`` value; the ClientApp handlers only run the list.
Tests call the steps and the composition directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedrs.federated.codec import CodecConfig, ErrorFeedback
from fedrs.federated.privacy import PrivacyConfig, clip_update, public_metrics
from fedrs.federated.secure import RAW, contribution, hold_update, statistics_units
from fedrs.federated.wire import pack_update, payload_bytes

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Outgoing:
    """A client's reply in the making: its tensors, its metrics, and — once a sender ran — the
    records that go up (``arrays`` None: nothing goes up with this message)."""

    state: State
    metrics: dict[str, Any]
    arrays: ArrayRecord | None = None
    codec: ConfigRecord = field(default_factory=lambda: ConfigRecord({}))
    sent: bool = False


Step = Callable[[Outgoing], Outgoing]


def clipped_to(received: State, norm: float) -> Step:
    """Client-side clipping: the server never receives this client's unclipped update."""

    def step(out: Outgoing) -> Outgoing:
        state, before = clip_update(out.state, received, norm)
        return replace(out, state=state, metrics={**out.metrics, "update_norm": before})

    return step


def poisoned_with_nan(out: Outgoing) -> Outgoing:
    """Test hook (``faults.nan``): the first floating tensor becomes NaN, as a diverged client's would."""
    first = next(k for k, v in out.state.items() if torch.is_floating_point(v))
    return replace(out, state={**out.state, first: torch.full_like(out.state[first], float("nan"))})


def published(settings: dict[str, Any]) -> Step:
    """Under noised DP (client- or record-level) the loss, metrics and update norm stay here (the
    accountant does not count them)."""

    def step(out: Outgoing) -> Outgoing:
        return replace(out, metrics=public_metrics(out.metrics, settings))

    return step


def held_for_secure_sums(context: Context, received: State, rnd: int, seed: int, pooled_variances: bool,
                         statistics: str = RAW) -> Step:
    """SecAgg+: nothing goes up now; the contribution waits in node state for the secure sums."""

    def step(out: Outgoing) -> Outgoing:
        hold_update(context, contribution(out.state, received, pooled_variances=pooled_variances,
                                          statistics=statistics), rnd, seed)
        return replace(out, sent=True, metrics={**out.metrics, "bytes_dense": payload_bytes(out.state),
                                                "bytes_sent": 0})

    return step


def encoded(context: Context, received: State, codec: dict[str, Any]) -> Step:
    """Through the codec; the residual of error feedback stays on this node between rounds."""

    def step(out: Outgoing) -> Outgoing:
        stored = context.state.array_records.get("codec_residual")
        feedback = ErrorFeedback.from_state(stored.to_torch_state_dict() if stored is not None else None)
        arrays, consts, dense, sent = pack_update(out.state, received, CodecConfig.from_dict(codec), feedback)
        context.state["codec_residual"] = ArrayRecord.from_torch_state_dict(feedback.state())
        return replace(out, arrays=arrays, codec=consts, sent=True,
                       metrics={**out.metrics, "bytes_dense": dense, "bytes_sent": sent})

    return step


def dense(out: Outgoing) -> Outgoing:
    size = payload_bytes(out.state)
    return replace(out, arrays=ArrayRecord.from_torch_state_dict(out.state), sent=True,
                   metrics={**out.metrics, "bytes_dense": size, "bytes_sent": size})


def upload_path(settings: dict[str, Any], context: Context, received: State, rnd: int, secure_seed: int,
                poison: str | None = None) -> list[Step]:
    """The steps a reply takes under this run's settings, in order; the last one is the sender."""
    privacy = settings.get("privacy")
    dp = PrivacyConfig.from_dict(privacy) if privacy else None
    steps: list[Step] = []
    if dp is not None and dp.clipping == "client":
        steps.append(clipped_to(received, dp.clipping_norm))
    if poison == "nan":
        steps.append(poisoned_with_nan)
    steps.append(published(settings))
    if settings.get("secure_aggregation") is not None:
        steps.append(held_for_secure_sums(context, received, rnd, secure_seed, pooled_variances=not privacy,
                                          statistics=statistics_units(bool(privacy))))
    elif settings.get("compression"):
        steps.append(encoded(context, received, settings["compression"]))
    else:
        steps.append(dense)
    return steps


def run_path(steps: list[Step], out: Outgoing) -> Outgoing:
    for step in steps:
        out = step(out)
    if not out.sent:
        raise RuntimeError("an upload path must end with a sender (secure sums, codec or dense)")
    return out
