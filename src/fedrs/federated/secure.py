"""Secure aggregation with Flower's SecAgg+ (Bell et al., CCS 2020): the server learns the
(weighted) mean of the clients' updates and nothing about any single one.

How it composes with the round loop. SecAgg+ sums one vector per client; modality-aware averaging
averages each tensor over the clients that hold it. So the tensors are grouped by the exact set
of clients holding them (``secure_groups``: e.g. the HSI encoder over the HSI holders, the LiDAR
encoder over the LiDAR holders, the head over everyone) and each group is one run of Flower's own
``SecAggPlusWorkflow`` over its members — one secure sum per modality group. A client trains once,
in the round's ordinary train message, and keeps its update (``contribution``) in its node state;
the protocol's masked-vector stage, handled on the client by Flower's ``secaggplus_mod``, reads the
group's tensors from there. What each client adds is its update against the global weights (small
values, as SecAgg+'s fixed-range quantisation needs), with sample weights as Flower's weights.
Under DP the BatchNorm statistics enter as they are, averaged with the weights.

SecAgg+ clips each client's weighted share to ±``clipping_range`` before quantising; a clipped
value would make the sum silently wrong (Houston's BatchNorm second moments reach the thousands),
so normalisation statistics have secure sums of their own, in units that keep them small and
precise (``RELATIVE``: a running mean's change in units of the global standard deviation, a
running variance's as a log-ratio — variances are pooled geometrically there), and a client
refuses to enter anything beyond the range (``held_contribution``).

What the server can no longer do: screen single updates (norm outliers, non-finite values — a
client checks its own update for non-finite values instead), clip them (differential privacy
needs ``clipping: client``; the server adds the noise to each group's mean), or decode low-rank
uploads (upload compression is refused: the sums are taken over masked integers).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as PROTOCOL_RECORD
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE as PROTOCOL_STATE
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from fedrs.config import from_mapping
from fedrs.federated.aggregation import State


def full_seed_masks(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[np.ndarray]:
    """SecAgg+'s masks from the whole 32-byte secret (SHAKE-256 as the stream), in place of Flower's
    ``pseudo_rand_gen``, which folds the secret into a 32-bit seed for numpy's RandomState: a server
    holding a two-member group's masked vector and the revealed self-mask seed tries all 2³² pairwise
    seeds against the vector's known first value (the weight factor) in about a CPU-hour and reads the
    member's update in the clear. Same output range as Flower's ([0, num_range − 1)), the same on
    every party (client mod and server workflow both call it)."""
    sizes = [int(np.prod(d)) if len(d) else 1 for d in dimensions_list]
    words = np.frombuffer(hashlib.shake_256(seed).digest(8 * max(sum(sizes), 1)), dtype=np.uint64)
    values = (words % np.uint64(num_range - 1)).astype(np.int64)
    out, start = [], 0
    for dims, size in zip(dimensions_list, sizes, strict=True):
        chunk = values[start:start + size]
        out.append(np.array(chunk[0], dtype=np.int64) if len(dims) == 0 else chunk.reshape(dims))
        start += size
    return out


# both ends of every secure sum run this project's code: the mod on the clients, the workflow on the server
for _module in ("flwr.client.mod.secure_aggregation.secaggplus_mod",
                "flwr.server.workflow.secure_aggregation.secaggplus_workflow"):
    importlib.import_module(_module).pseudo_rand_gen = full_seed_masks  # type: ignore[attr-defined]

__all__ = ["PROTOCOL_RECORD", "SecureAggregationConfig", "apply_means", "contribution", "held_contribution",
           "hold_update", "secure_groups", "secure_mean"]

HELD_UPDATE, HELD_META = "secure_update", "secure_update_meta"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecureAggregationConfig:
    """Flower's ``SecAggPlusWorkflow`` settings. ``num_shares`` and ``reconstruction_threshold``
    as Flower reads them: a float is a fraction (of the group, of the shares), an int a count."""

    num_shares: float | int = 1.0              # neighbours each client shares its secrets with
    reconstruction_threshold: float | int = 0.67  # shares needed to unmask a client (tolerates dropouts)
    clipping_range: float = 8.0                # |weighted update value| clipped here before quantising
    quantization_range: int = 4_194_304        # 2^22 levels over [-clipping_range, clipping_range]
    modulus_range: int = 4_294_967_296         # the integer ring of the masked sums
    timeout: float | None = None               # seconds per protocol stage; None: the round timeout
    statistics_range: float = 4096.0           # the clipping range of the normalisation statistics' own sums
                                               # (their changes in std units and log-ratios, RELATIVE)

    def __post_init__(self) -> None:
        if not self.clipping_range > 0:
            raise ValueError(f"secure_aggregation.clipping_range must be > 0, got {self.clipping_range}")
        if not self.statistics_range > 0:
            raise ValueError(f"secure_aggregation.statistics_range must be > 0, got {self.statistics_range}")
        if self.quantization_range < 2 or self.modulus_range <= self.quantization_range:
            raise ValueError("secure_aggregation: expected 2 ≤ quantization_range < modulus_range, got "
                             f"{self.quantization_range} and {self.modulus_range}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SecureAggregationConfig:
        return from_mapping(cls, d, label="secure_aggregation")


def secure_groups(holdings: Mapping[int, Iterable[str]]) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """(tensor names, clients) per secure sum: tensors held by exactly the same clients share one."""
    holders: dict[str, list[int]] = defaultdict(list)
    for cid in sorted(holdings):
        for name in holdings[cid]:
            holders[name].append(cid)
    groups: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for name in sorted(holders):
        groups[tuple(holders[name])].append(name)
    return [(tuple(names), members) for members, names in sorted(groups.items())]


def _second_moment_pair(name: str, state: State) -> str | None:
    mean = name.removesuffix("running_var") + "running_mean"
    return mean if name.endswith("running_var") and mean in state else None


RAW, RELATIVE = "raw", "relative"
VARIANCE_FLOOR = 1e-8  # a variance below it counts as this (log-ratios and std units stay finite)


def is_statistic(name: str) -> bool:
    return name.endswith(("running_mean", "running_var"))


def statistics_units(private: bool) -> str:
    """How a run's normalisation statistics enter its secure sums — the clients' contributions and
    the server's means must agree: as they are under DP (its clipped update is small and its noise is
    sized in its own units), else ``RELATIVE``, in secure sums of their own."""
    return RAW if private else RELATIVE


def _variance_of(name: str, state: State) -> torch.Tensor:
    return state[name.removesuffix("running_mean") + "running_var"].double().clamp_min(VARIANCE_FLOOR)


def contribution(state: State, reference: State, pooled_variances: bool = True, statistics: str = RAW) -> State:
    """What a client puts into the secure sums: ``state − reference`` per floating-point tensor
    (float64); with ``pooled_variances`` a running variance enters as its second moment var + mean².
    ``statistics=RELATIVE``: a running mean's change in units of the reference's standard deviation,
    a running variance's as log(var / reference var) — small, and precise at any scale, where
    second moments (hundreds to thousands in a classifier's heads) lose the small variances to
    SecAgg+'s fixed quantisation."""
    out: State = {}
    for name, value in state.items():
        if not torch.is_floating_point(value) or name not in reference:
            continue
        local, base = value.double(), reference[name].double()
        if statistics == RELATIVE and is_statistic(name):
            if name.endswith("running_var"):
                out[name] = local.clamp_min(VARIANCE_FLOOR).log() - base.clamp_min(VARIANCE_FLOOR).log()
            else:
                out[name] = (local - base) / _variance_of(name, reference).sqrt()
            continue
        mean = _second_moment_pair(name, state) if pooled_variances else None
        if mean is not None:
            local = local + state[mean].double() ** 2
            base = base + reference[mean].double() ** 2
        out[name] = local - base
    return out


def apply_means(global_state: State, means: State, pooled_variances: bool = True, statistics: str = RAW) -> State:
    """The global state moved by the securely averaged contributions (inverse of ``contribution``):
    a pooled variance is E[var + mean²] − (pooled mean)², as ``aggregation.pooled_variance``; under
    ``RELATIVE`` statistics a variance is the geometric mean of the clients'."""
    if statistics == RELATIVE:
        means = dict(means)
        for name in [k for k in means if is_statistic(k)]:
            delta = means.pop(name)
            current = global_state[name].double()
            value = (current.clamp_min(VARIANCE_FLOOR) * delta.exp() if name.endswith("running_var")
                     else current + delta * _variance_of(name, global_state).sqrt())
            means[name] = value - current
        pooled_variances = False
    new = {k: v.clone() for k, v in global_state.items()}
    for name, delta in means.items():
        value = global_state[name].double() + delta
        if name.endswith("running_var"):  # DP noise may push a variance below zero
            value = value.clamp_min(0.0)
        new[name] = value.to(global_state[name].dtype)
    for name, delta in means.items():
        mean = _second_moment_pair(name, global_state) if pooled_variances else None
        if mean is None or mean not in means:
            continue
        second = global_state[name].double() + global_state[mean].double() ** 2 + delta
        new[name] = (second - new[mean].double() ** 2).clamp_min(0.0).to(global_state[name].dtype)
    return new


# ----------------------------------------------------------------------------- client side
def hold_update(context: Context, update: State, rnd: int, seed: int) -> None:
    """Keep this round's contribution in the node state until the secure sums ask for it."""
    bad = next((k for k, v in update.items() if not torch.isfinite(v).all()), None)
    if bad is not None:  # the server cannot screen what it cannot see: the client refuses to contribute
        raise ValueError(f"non-finite values in {bad}: this update is not entered into the secure sum")
    context.state[HELD_UPDATE] = ArrayRecord.from_torch_state_dict(update)
    context.state[HELD_META] = ConfigRecord({"round": rnd, "seed": seed})


def held_contribution(msg: Message, context: Context) -> Message:
    """The inner handler of ``secaggplus_mod``'s masked-vector stage: the named tensors of the held
    update, as the legacy FitRes the mod masks (weight = the server's ``weight`` for this client)."""
    asked = msg.content.config_records["fitins.config"]
    rnd, group = int(str(asked["round"])), int(str(asked["group"]))
    meta = context.state.config_records.get(HELD_META)
    if meta is None or int(str(meta["round"])) != rnd:
        raise RuntimeError(f"secure sum of round {rnd}: this node holds "
                           f"{'no update' if meta is None else 'the update of round ' + str(meta['round'])}")
    update = context.state.array_records[HELD_UPDATE]
    names = json.loads(str(asked["names"]))
    # the range and weight the mod itself scales and clips with (its state from the protocol's setup)
    protocol = context.state.config_records.get(PROTOCOL_STATE)
    settings = protocol if protocol is not None and "clipping_range" in protocol else asked
    share = int(str(asked["weight"])) / float(str(settings["max_weight"]))
    bound = float(str(settings["clipping_range"]))
    for name in names:  # SecAgg+ would clip silently: a sum of clipped values is a wrong aggregate
        largest = float(np.abs(update[name].numpy()).max(initial=0.0)) * share
        if largest > bound:
            # the details stay in this node's log: the error goes to the server, and the size is the client's
            logger.warning("secure sum of round %d: %s enters with |value| %.4g at this client's share, beyond "
                           "±%g", rnd, name, largest, bound)
            raise ValueError(f"secure sum of round {rnd}: a value beyond SecAgg+'s clipping range; raise "
                             "secure_aggregation.clipping_range or statistics_range (this node's log names it)")
    # SecAgg+ rounds stochastically with numpy's global generator: seeded, the same run gives the same sums
    np.random.seed((int(str(meta["seed"])) * 1_000_003 + group) % 2**32)
    arrays = [np.asarray(update[name].numpy(), dtype=np.float64) for name in names]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), int(str(asked["weight"])), {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


# ----------------------------------------------------------------------------- server side
def content_bytes(content: RecordDict) -> int:
    """Bytes a message's records carry: arrays, and the byte strings of config records (keys,
    ciphertexts, shares, masked vectors); other config values as 8 bytes."""
    total = sum(len(a.data) for record in content.array_records.values() for a in record.values())
    for record in content.config_records.values():
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            total += sum(len(v) if isinstance(v, bytes | str) else 8 for v in items)
    return total


@dataclass
class MeteredGrid:
    """A grid seen through a meter: bytes to and from each node, and the time spent waiting."""

    grid: Grid
    down: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    up: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    seconds: float = 0.0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        # SecAgg+'s workflow hands every node the same content object, and its client mod edits what it
        # receives: each node gets its own copy, as a serialising transport would give it
        messages = [Message(copy.deepcopy(m.content), dst_node_id=m.metadata.dst_node_id,
                            message_type=m.metadata.message_type, group_id=m.metadata.group_id) for m in messages]
        for msg in messages:
            self.down[msg.metadata.dst_node_id] += content_bytes(msg.content)
        t0 = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.seconds += time.perf_counter() - t0
        for reply in replies:
            if not reply.has_error():
                self.up[reply.metadata.src_node_id] += content_bytes(reply.content)
        return replies


class _GroupSum(Strategy):
    """The strategy face ``SecAggPlusWorkflow`` expects: it configures the given nodes and keeps
    the unmasked mean; nothing else of a strategy is used."""

    def __init__(self, instructions: list[tuple[GridClientProxy, FitIns]]):
        self.instructions = instructions
        self.mean: list[np.ndarray] | None = None
        self.contributors: list[int] = []

    def configure_fit(self, server_round, parameters, client_manager):
        return self.instructions

    def aggregate_fit(self, server_round, results, failures):
        if results:  # every result carries the same unmasked weighted mean
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
            self.contributors = [proxy.node_id for proxy, _ in results]
        return None, {}

    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def secure_mean(grid: Grid, weights: dict[int, int], names: tuple[str, ...], rnd: int, group: int,
                cfg: SecureAggregationConfig, timeout: float | None) -> tuple[dict[str, np.ndarray] | None, list[int]]:
    """One SecAgg+ run over the nodes in ``weights`` (node id → integer weight): the weighted mean
    of their held contributions to ``names`` and the nodes it includes; (None, []) when the
    protocol could not finish (too few nodes left to unmask)."""
    fitins = {node: FitIns(Parameters(tensors=[], tensor_type="numpy.ndarray"),
                           {"round": rnd, "group": group, "names": json.dumps(list(names)), "weight": int(w),
                            "max_weight": float(sum(weights.values())), "clipping_range": float(cfg.clipping_range)})
              for node, w in weights.items()}
    strategy = _GroupSum([(GridClientProxy(node, grid, run_id=0), fitins[node]) for node in sorted(weights)])
    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: rnd}), MAIN_PARAMS_RECORD: ArrayRecord()})
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}), strategy=strategy)
    workflow = SecAggPlusWorkflow(cfg.num_shares, cfg.reconstruction_threshold, max_weight=float(sum(weights.values())),
                                  clipping_range=cfg.clipping_range, quantization_range=cfg.quantization_range,
                                  modulus_range=cfg.modulus_range, timeout=cfg.timeout if cfg.timeout else timeout)
    workflow(grid, context)
    if strategy.mean is None:
        return None, []
    return dict(zip(names, strategy.mean, strict=True)), strategy.contributors
