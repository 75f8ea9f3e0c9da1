"""Secure aggregation (Flower's SecAgg+, one secure sum per modality group): the arithmetic on hand
values, and rounds against the real ClientApp on the fake grid — same aggregate as the plain
round, and nothing the server receives is a client's update."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import Key

from fedrs.federated.aggregation import ClientUpdate, aggregate_modality_aware
from fedrs.federated.secure import (
    HELD_UPDATE,
    PROTOCOL_RECORD,
    RELATIVE,
    SecureAggregationConfig,
    apply_means,
    contribution,
    held_contribution,
    hold_update,
    secure_groups,
)
from fedrs.federated.server.loop import run_rounds, start_run
from fedrs.federated.server.steps import aggregate_round, collect_updates, configure_round
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config


def test_tensors_held_by_the_same_clients_share_one_secure_sum():
    holdings = {0: ["head.w", "hsi.w"], 1: ["head.w", "hsi.w", "lidar.w"], 2: ["head.w", "lidar.w"], 3: ["head.w"]}
    assert secure_groups(holdings) == [  # ordered by their members
        (("hsi.w",), (0, 1)),
        (("head.w",), (0, 1, 2, 3)),
        (("lidar.w",), (1, 2)),
    ]


def _group_means(updates, global_state, **encoding):
    """What the secure sums compute: per group of holders, the sample-weighted mean of the contributions."""
    means = {}
    for names, members in secure_groups({u.client_id: [k for k in u.state if u.state[k].is_floating_point()]
                                         for u in updates}):
        group = [updates[c] for c in members]
        total = sum(u.num_samples for u in group)
        for name in names:
            means[name] = sum(u.num_samples / total * contribution(u.state, global_state, **encoding)[name]
                              for u in group)
    return means


def test_means_of_contributions_give_the_modality_aware_aggregate_with_pooled_variances():
    """What the secure sums compute (weighted means of the contributions), applied to the global
    state, equals aggregate_modality_aware on the same updates — BatchNorm variances pooled."""
    g = torch.Generator().manual_seed(0)
    global_state = {"bn.running_mean": torch.randn(3, generator=g), "bn.running_var": torch.rand(3, generator=g) + 0.5,
                    "bn.num_batches_tracked": torch.tensor(4), "hsi.w": torch.randn(2, 2, generator=g)}
    updates = []
    for cid, (mods, n) in enumerate([(("hsi", "lidar"), 10), (("hsi",), 30), (("lidar",), 20)]):
        state = {k: v + 0.3 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 1
                 for k, v in global_state.items() if not (k == "hsi.w" and "hsi" not in mods)}
        state["bn.running_var"] = state["bn.running_var"].abs()
        updates.append(ClientUpdate(cid, state, n, mods))
    owner = {"hsi.w": "hsi"}.get
    expected, _ = aggregate_modality_aware(global_state, updates, owner)
    means = _group_means(updates, global_state)
    got = apply_means(global_state, means)
    for name in ("bn.running_mean", "bn.running_var", "hsi.w"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-6)
    assert int(got["bn.num_batches_tracked"]) == 4  # a counter is not summed: it keeps the global value
    # RELATIVE statistics: a mean's change in units of the reference std, a variance's as a log-ratio;
    # applied back, the means are the weighted means and the variances the weighted geometric means
    relative = _group_means(updates, global_state, statistics=RELATIVE)
    assert torch.equal(relative["hsi.w"], means["hsi.w"])
    moved = apply_means(global_state, relative, statistics=RELATIVE)
    weights = torch.tensor([u.num_samples for u in updates], dtype=torch.float64)
    weights = weights / weights.sum()
    names = ("bn.running_mean", "bn.running_var")
    stacked = {k: torch.stack([u.state[k].double() for u in updates]) for k in names}
    arithmetic = (weights[:, None] * stacked["bn.running_mean"]).sum(0)
    torch.testing.assert_close(moved["bn.running_mean"].double(), arithmetic)
    geometric = (weights[:, None] * stacked["bn.running_var"].log()).sum(0).exp()
    torch.testing.assert_close(moved["bn.running_var"].double(), geometric, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(moved["hsi.w"], got["hsi.w"])


def test_a_value_beyond_secaggs_clipping_range_is_refused_not_clipped():
    """SecAgg+ clips each client's share silently, and a sum of clipped values is a wrong aggregate
    (Houston's BatchNorm second moments reach the thousands; FedDiff diverged under it): the client
    refuses to enter such a value and says which setting to raise — without the value itself."""
    FakeGrid(1)  # a Flower task's identity, as a grid sets it: messages can be built
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    hold_update(context, {"bn.running_var": torch.tensor([40.0, -3.0]), "w": torch.tensor([0.5])}, 1, 0)

    def asking(names, weight, max_weight):
        config = ConfigRecord({"round": 1, "group": 0, "names": json.dumps(names), "weight": weight,
                               "max_weight": max_weight, "clipping_range": 8.0})
        return Message(RecordDict({"fitins.config": config}), dst_node_id=1, message_type="train")

    with pytest.raises(ValueError, match=r"beyond SecAgg\+.s clipping range; raise .*statistics_range") as refused:
        held_contribution(asking(["bn.running_var", "w"], 1, 2.0), context)
    # what reaches the server names neither the tensor nor its size (they are the client's data)
    assert "running_var" not in str(refused.value) and "20" not in str(refused.value)
    assert held_contribution(asking(["bn.running_var"], 1, 8.0), context)  # a share of 1/8: 5 ≤ 8
    assert held_contribution(asking(["w"], 1, 2.0), context)


def test_a_bad_secure_block_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown keys"):
        SecureAggregationConfig.from_dict({"clip_range": 1.0})
    with pytest.raises(ValueError, match="clipping_range must be > 0"):
        SecureAggregationConfig(clipping_range=0.0)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"compression": {"rank": 2}}, "set compression: null"),
    ({"privacy": {"noise_multiplier": 1.0, "clipping_norm": 1.0, "clipping": "server"}}, "privacy.clipping: client"),
])
def test_settings_that_need_single_updates_are_refused_before_the_first_round(tiny_federation, overrides, message):
    fed = tiny_federation
    with pytest.raises(ValueError, match=message):
        start_run(FakeGrid(3), config(fed, secure_aggregation={}, **overrides), fed["test"], 3)


def _feddiff_round(fed, secure):
    grid = FakeGrid(fed["num_clients"])
    run, _ = start_run(grid, config(fed, algorithm="feddiff", min_clients=2, client_data_dirs=[fed["features_dir"]],
                                    secure_aggregation=secure), fed["test"], fed["num_clients"])
    record = configure_round(run, 1)
    run.protocol.before_updates(grid, run, record)
    collect_updates(grid, run, record)
    aggregate_round(run, record)
    return grid, run, record


def test_a_secure_round_gives_the_plain_aggregate_and_the_server_never_holds_an_update(tiny_split_federation):
    fed = tiny_split_federation
    _, plain_run, plain = _feddiff_round(fed, None)
    grid, run, record = _feddiff_round(fed, {})
    # FedDiff's groups: the HSI branch over the two HSI holders, the LiDAR branch over the two LiDAR
    # holders, the fusion blocks and heads over all four — every client in two
    # (each split in two: the weights, and the normalisation statistics in their own units and range)
    assert record.secure["sums"] == 6 and sorted(record.secure["group_sizes"]) == [2, 2, 2, 2, 4, 4]
    assert record.secure_from == {0: 4, 1: 4, 2: 4, 3: 4} and record.aggregated
    assert [u.client_id for u in record.accepted] == [u.client_id for u in plain.accepted]
    def largest_difference(statistics):
        return max(float((run.global_state[k].double() - plain_run.global_state[k].double()).abs().max())
                   for k in run.global_state if run.global_state[k].is_floating_point()
                   and k.endswith(("running_mean", "running_var")) == statistics)

    # equal up to SecAgg+'s quantisation (2^22 levels over ±8, divided by a client's weight share); the
    # normalisation statistics are summed apart (±256, std units and log-ratios): their variances pooled
    # geometrically, not as the plain run's pooled variance — close, not equal
    assert 0 < largest_difference(statistics=False) < 1e-4  # and it did go through the quantised protocol
    for name in (k for k in run.global_state if k.endswith("running_mean")):  # means: to SecAgg+'s levels
        torch.testing.assert_close(run.global_state[name], plain_run.global_state[name], atol=1e-2, rtol=0)
    for name in (k for k in run.global_state if k.endswith("running_var")):  # geometric ≤ arithmetic pooling
        ratio = run.global_state[name].double() / plain_run.global_state[name].double().clamp_min(1e-12)
        assert float(ratio.max()) < 1.01 and float(ratio.min()) > 0.7, name
    assert record.row()["train_loss"] == pytest.approx(plain.row()["train_loss"])
    # what the server received: no train reply carries arrays; the masked vectors look nothing like
    # the updates the clients hold
    train_replies = [m for m in grid.received if m.metadata.message_type == "train"]
    assert all(len(record) == 0 for m in train_replies for record in m.content.array_records.values())
    assert all(HELD_UPDATE in ctx.state.array_records for ctx in grid.contexts.values())  # kept by the clients
    masked = [m for m in train_replies if Key.MASKED_PARAMETERS in m.content.config_records.get(PROTOCOL_RECORD, {})]
    assert len(masked) == 16  # four clients × two groups × (weights, statistics)
    levels, ring = SecureAggregationConfig().quantization_range, SecureAggregationConfig().modulus_range
    for reply in masked:
        vector = np.concatenate([bytes_to_ndarray(b).ravel() for b in
                                 reply.content.config_records[PROTOCOL_RECORD][Key.MASKED_PARAMETERS]])
        # a client's quantised update alone lies in [0, levels]; masked, it is spread over the whole ring
        assert np.mean(vector <= levels) < 0.01 and 0.25 < np.std(vector.astype(np.float64)) / ring < 0.33
    # the protocol's traffic is counted: both ways, every client
    secagg = [t for t in record.traffic if t["payload"] == "secagg"]
    assert {t["client_id"] for t in secagg} == {0, 1, 2, 3} and all(t["bytes_sent"] > 0 for t in secagg)


def test_secure_runs_are_reproducible_and_survive_a_failed_client(tiny_federation):
    fed = tiny_federation
    cfg = dict(num_rounds=2, secure_aggregation={}, statistics_pass=True, faults={"nan": [[2, 0]]})
    first = run_rounds(FakeGrid(3), config(fed, **cfg), fed["test"], 3)
    second = run_rounds(FakeGrid(3), config(fed, **cfg), fed["test"], 3)
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name
    one, two = first["history"]
    assert one["accepted"] == [0, 1, 2] and one["secagg_sums"] == 2  # all hold both modalities: weights, statistics
    # round 2: client 0's update is non-finite; it refuses to enter it and the other two are summed
    assert two["accepted"] == [1, 2] and "non-finite" in two["failed"][0]["reason"]
    assert two["aggregated"] and two["statistics_from"] == [1, 2]  # the statistics pass, securely too
    assert all(torch.isfinite(v).all() for v in first["state"].values() if v.is_floating_point())


def test_secure_aggregation_with_client_clipped_dp_noises_each_groups_mean(tiny_federation):
    fed = tiny_federation
    privacy = {"noise_multiplier": 0.5, "clipping_norm": 0.05, "clipping": "client", "delta": 1e-5}
    result = run_rounds(FakeGrid(3), config(fed, num_rounds=1, secure_aggregation={}, privacy=privacy,
                                            statistics_pass=False), fed["test"], 3)
    (row,) = result["history"]
    assert row["dp_noise_std"] == pytest.approx(0.5 * 0.05 / 3) and row["dp_epsilon"] > 0
    # nothing un-noised about a client reaches the history: no loss, no update norm, no clipped count
    assert row["train_loss"] is None and "dp_update_norm_median" not in row and "dp_clipped" not in row


def test_masks_use_the_whole_shared_secret_not_flowers_32_bit_fold():
    """Flower's pseudo_rand_gen folds a 32-byte secret into 32 bits (XOR of its words): two secrets a
    server would meet among 2³² guesses give the same mask. The masks this project's secure sums use
    depend on every bit; both ends of the protocol call them."""
    import sys

    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen as flowers

    from fedrs.federated.secure import full_seed_masks

    secret = bytes(range(32))
    words = [int.from_bytes(secret[i:i + 4], "little") for i in range(0, 32, 4)]
    # flip the same bits in two words: the XOR fold (Flower's 32-bit seed) is unchanged
    twin = bytearray(secret)
    for i in (0, 4):
        twin[i:i + 4] = (words[i // 4] ^ 0xDEADBEEF).to_bytes(4, "little")
    dims = [(3, 4), ()]
    same = flowers(bytes(twin), 2**32, dims)
    assert all(np.array_equal(a, b) for a, b in zip(flowers(secret, 2**32, dims), same, strict=True))
    ours, other = full_seed_masks(secret, 2**32, dims), full_seed_masks(bytes(twin), 2**32, dims)
    assert not np.array_equal(ours[0], other[0])
    assert [a.shape for a in ours] == [(3, 4), ()] and all(a.dtype == np.int64 for a in ours)
    assert all(((0 <= a) & (a < 2**32 - 1)).all() for a in ours)
    assert all(np.array_equal(a, b) for a, b in zip(ours, full_seed_masks(secret, 2**32, dims), strict=True))
    for module in ("flwr.client.mod.secure_aggregation.secaggplus_mod",
                   "flwr.server.workflow.secure_aggregation.secaggplus_workflow"):
        assert sys.modules[module].pseudo_rand_gen is full_seed_masks


def test_with_a_compressed_downlink_the_secure_aggregate_is_still_the_plain_one(tiny_federation):
    """Clients send their change against what they decoded, which a compressed downlink leaves off
    the exact global weights: the server anchors the secure mean at the mean of those decoded
    downloads (it encoded them), as the plain mean of the clients' states is. Added to the exact
    weights instead, the codec's error accumulated and Houston FedDiff diverged."""
    fed = tiny_federation
    down = {"downlink_compression": {"rank": 1, "quantize_bits": 8}, "num_rounds": 3}
    plain = run_rounds(FakeGrid(3), config(fed, **down), fed["test"], 3)
    secure = run_rounds(FakeGrid(3), config(fed, secure_aggregation={}, **down), fed["test"], 3)
    weights = [k for k, v in plain["state"].items() if v.is_floating_point() and not k.endswith(("_mean", "_var"))]
    gaps = [float((secure["state"][k].double() - plain["state"][k].double()).abs().max()) for k in weights]
    # SecAgg+'s rounding (~1e-5 a round) passes through a rank-1 codec that amplifies small differences:
    # 3.5e-4 after three rounds; unanchored, the codec's error accumulated to 5e-3
    assert max(gaps) < 1e-3, max(gaps)
