"""Real Flower simulations (Ray): faults during a run, and SecAgg+ through the engine. The loop's own
behaviour (resume, too few updates, compression) is tested on the in-process grid (tests/federated/server)."""

import pytest
import torch

from fedrs.federated.engine import SimulationResources, run_job, run_simulation_engine
from fedrs.federated.jobs import RoundsJob
from fedrs.federated.server.config import FederatedConfig
from fedrs.federated.server.loop import run_rounds
from tests.federated.fake_grid import FakeGrid

pytestmark = pytest.mark.integration
RESOURCES = SimulationResources(num_cpus_per_client=1, total_cpus=2)


def config(fed, **overrides):
    # the server scores its copy of the held-out pixels: these tests count training's messages and faults
    # (the clients' scoring: tests/federated/server/test_validation.py)
    base = dict(algorithm="fedavg", validation="server", model=fed["spec"], train={"epochs": 1, "batch_size": 8},
                num_rounds=3, min_clients=1, seed=5, partition_dir=fed["dir"])
    return FederatedConfig.from_dict({**base, **overrides})


@pytest.mark.heavy(30)
def test_failures_lost_replies_and_nan_updates_are_survived(tiny_federation):
    # faults are keyed by round, and the statistics pass belongs to the last round: off, so that
    # each fault strikes once (test_server covers the pass). The lost reply is dropped as a reply that
    # missed the round timeout is, without waiting on a clock: the round waits for every other reply
    cfg = config(tiny_federation, num_rounds=2, round_timeout=None, statistics_pass=False,
                 faults={"raise": [[1, 0]], "nan": [[2, 1]], "lost": [[2, 2]]})
    result = run_simulation_engine(cfg, tiny_federation["test"], 3, RESOURCES)
    first, second = result["history"]
    assert first["sampled"] == [0, 1, 2] and first["accepted"] == [1, 2]
    assert first["failed"][0]["client_id"] == 0 and "injected failure of client 0" in first["failed"][0]["reason"]
    assert first["dropped"] == []
    assert second["accepted"] == [0]
    assert second["rejected"] == [{"client_id": 1, "reason": second["rejected"][0]["reason"]}]
    assert "non-finite" in second["rejected"][0]["reason"]
    assert second["dropped"] == [{"client_id": 2, "stage": "train", "reason": "no reply within the round timeout"}]
    assert all(row["aggregated"] for row in result["history"])
    for row in result["history"]:  # where the round's time went: every client's work lies inside the wait,
        assert row["seconds"] == pytest.approx(row["wait_seconds"] + row["server_seconds"])  # at most two at once
        assert 0 < row["client_seconds_max"] <= row["client_seconds"] <= row["wait_seconds"] * 2
    assert all(torch.isfinite(t).all() for t in result["state"].values() if torch.is_floating_point(t))
    # traffic: three downloads per round, uploads only from clients whose reply arrived
    ups = [t for t in result["traffic"] if t["direction"] == "up"]
    assert len([t for t in result["traffic"] if t["direction"] == "down"]) == 6 and len(ups) == 4
    # the in-process engine (what the pipeline tests run on) gives the same model, bit for bit, faults and all
    inprocess = run_job(RoundsJob(cfg, tiny_federation["test"]), 3, {"engine": "inprocess"})
    assert [r["accepted"] for r in inprocess["history"]] == [r["accepted"] for r in result["history"]]
    assert all(torch.equal(inprocess["state"][k], v) for k, v in result["state"].items())


@pytest.mark.heavy(30)
def test_secure_aggregation_on_the_simulation_engine_matches_the_plain_run(tiny_federation):
    """SecAgg+ through Flower's own engine (Ray actors, node state kept between messages): the same
    model as the plain run up to the protocol's quantisation, and the protocol's traffic logged."""
    # the plain reference on the in-process grid (the same ClientApp handlers, no Ray start-up)
    plain = run_rounds(FakeGrid(3), config(tiny_federation, num_rounds=2), tiny_federation["test"], 3)
    secure = run_simulation_engine(config(tiny_federation, num_rounds=2, secure_aggregation={}),
                                   tiny_federation["test"], 3, RESOURCES)
    assert [r["accepted"] for r in secure["history"]] == [[0, 1, 2], [0, 1, 2]]
    # two secure sums per round (every client holds both modalities: the weights, and the BatchNorm
    # statistics in their own units), and one more for the last round's statistics pass
    assert [(r["secagg_sums"], r["secagg_sums_failed"]) for r in secure["history"]] == [(2, 0), (3, 0)]
    for name, value in plain["state"].items():
        if not value.is_floating_point():
            continue
        if name.endswith("running_var"):  # pooled geometrically under SecAgg+: close to the plain pooled variance
            torch.testing.assert_close(secure["state"][name], value, atol=1e-2, rtol=0.1)
        elif name.endswith("running_mean"):  # in std units over ±4096: levels of ~2e-3 std
            torch.testing.assert_close(secure["state"][name], value, atol=5e-3, rtol=1e-2)
        else:
            torch.testing.assert_close(secure["state"][name], value, atol=2e-4, rtol=1e-3)
    ups = [t for t in secure["traffic"] if t["direction"] == "up"]
    assert {t["payload"] for t in ups} == {"weights", "statistics", "secagg"}
    # the train replies carry no update (sent 0 of its dense size); it goes up masked, inside the protocol
    assert all(t["bytes_sent"] == 0 < t["bytes_dense"] for t in ups if t["payload"] != "secagg")
    assert all(t["bytes_sent"] > 0 for t in ups if t["payload"] == "secagg")
