"""FedDiff's round protocol against a fake grid that calls the real ClientApp: whole sites sampled,
the partner outputs relayed untouched, a client without its partner dropped, two statistics passes —
and the plain protocol for every algorithm that exchanges nothing."""

import numpy as np

from fedrs.feddiff.relay import PartnerRelay
from fedrs.federated.algorithms import ALGORITHMS
from fedrs.federated.server.loop import PROTOCOLS
from fedrs.federated.server.passes import statistics_round
from fedrs.federated.server.protocol import RoundProtocol
from fedrs.federated.server.steps import aggregate_round, collect_updates, configure_round
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import started


def test_only_the_algorithms_that_exchange_outputs_relay_them():
    for name, algorithm in ALGORITHMS.items():
        protocol = PROTOCOLS[algorithm.round_protocol]
        assert (protocol is PartnerRelay) == algorithm.exchanges_features, name
        assert protocol is PartnerRelay or protocol is RoundProtocol
    assert ALGORITHMS["feddiff"].exchanges_features and not ALGORITHMS["feddiff_centralized"].exchanges_features


def test_whole_sites_are_sampled_and_the_plain_protocol_samples_clients():
    clients = {c: {"site": c // 2} for c in range(8)}  # four sites of two holders
    for seed in range(20):
        chosen = PartnerRelay().sample(np.random.default_rng(seed), list(range(8)), 4, clients)
        sites = [clients[c]["site"] for c in chosen]
        assert len(chosen) == 4 and all(sites.count(s) == 2 for s in sites)
    drawn = {tuple(RoundProtocol().sample(np.random.default_rng(s), list(range(8)), 3, clients)) for s in range(20)}
    assert all(len(set(d)) == 3 for d in drawn) and len(drawn) > 1
    # a site split across the two sampled clients is what whole-site sampling rules out
    assert any(len({clients[c]["site"] for c in d}) == 3 for d in drawn)


def test_feddiff_runs_two_statistics_passes_and_fedavg_one(tiny_federation, tiny_split_federation):
    for fed, overrides, passes in ((tiny_split_federation, {"algorithm": "feddiff", "min_clients": 2,
                                                           "client_data_dirs": [tiny_split_federation["features_dir"]]},
                                    2), (tiny_federation, {}, 1)):
        grid, run, _ = started(fed, num_rounds=1, statistics_pass=True, **overrides)
        record = configure_round(run, 1)
        run.protocol.before_updates(grid, run, record)
        collect_updates(grid, run, record)
        aggregate_round(run, record)
        statistics_round(grid, run, record)
        asked = [m for m in grid.sent if m.metadata.message_type == "query.statistics"]
        assert len(asked) == passes * len(run.eligible) and record.statistics_from == sorted(run.eligible)


def test_exchange_relays_the_partner_outputs_untouched(tiny_split_federation):
    fed = tiny_split_federation
    codec = {"rank": 4, "quantize_bits": 8}
    grid, run, _ = started(fed, algorithm="feddiff", min_clients=2, client_data_dirs=[fed["features_dir"]],
                           exchange_compression=codec, compression=codec)
    record = configure_round(run, 1)
    assert record.sampled == [0, 1, 2, 3]
    run.protocol.before_updates(grid, run, record)
    sent = {r.metadata.src_node_id - 100: r for r in grid.received if "codec" in r.content}
    site = {c: info["site"] for c, info in run.clients.items()}
    for cid, (arrays, _codec_record) in record.relayed.items():
        partner = next(p for p in sent if p != cid and site[p] == site[cid])
        assert arrays is sent[partner].content["arrays"]  # relayed as it came, never decoded
    # nothing patch- or feature-shaped went up: low-rank, 8-bit factors of the branch outputs only
    for reply in sent.values():
        for array in reply.content["arrays"].values():
            assert array.numpy().dtype == np.uint8 and array.numpy().ndim == 2
    collect_updates(grid, run, record)
    aggregate_round(run, record)
    assert record.aggregated and [u.client_id for u in record.updates] == [0, 1, 2, 3]
    ups = [t for t in record.traffic if t["payload"] == "features" and t["direction"] == "up"]
    assert len(ups) == 4 and all(t["bytes_sent"] < t["bytes_dense"] for t in ups)


def test_a_client_without_its_partner_is_dropped(tiny_split_federation):
    fed = tiny_split_federation
    grid, run, _ = started(fed, grid=FakeGrid(4, silent={(1, 1)}), algorithm="feddiff",
                           client_data_dirs=[fed["features_dir"]])
    record = configure_round(run, 1)
    run.protocol.before_updates(grid, run, record)
    lost = {d["client_id"]: d["reason"] for d in record.dropped}
    partner_of_1 = next(c for c, i in run.clients.items() if c != 1 and i["site"] == run.clients[1]["site"])
    assert lost == {1: "no reply within the round timeout", partner_of_1: "its site partner delivered no features"}
    collect_updates(grid, run, record)
    assert sorted(u.client_id for u in record.updates) == sorted(set(range(4)) - {1, partner_of_1})
