"""Validation on the clients (``validation: clients``): every client scores the global model on its
own validation pixels and sends confusion counts; the server never holds a validation pixel. The
claims checked against the server scoring the same pixels itself: the same scores, the same model
(scoring leaves training untouched), and only counts travel."""

import pytest
import torch

from fedrs.federated.jobs import RoundsJob
from fedrs.federated.server.loop import run_rounds
from fedrs.metrics import CONFUSION, CROSS_ENTROPY
from tests.federated.fake_grid import FakeGrid
from tests.federated.server.runs import config, started

CODEC = {"rank": 4, "quantize_bits": 8}


def both_ways(fed, **overrides):
    """The same run with the server scoring its copy of the held-out pixels, and with the clients
    scoring theirs (each holds its share of the same pixels: tests/federated/tiny.py)."""
    runs = {}
    for where in ("server", "clients"):
        cfg = config(fed, eval_samples=None, validation=where, **overrides)
        job = RoundsJob(cfg, fed["test"])  # what the simulation and the deployment engines hand the server
        runs[where] = run_rounds(FakeGrid(fed["num_clients"]), cfg, job.validation, fed["num_clients"])
    return runs["server"], runs["clients"]


def assert_same_model_and_scores(server, clients, pixels, every_round=True):
    """``every_round``: the rounds before the last were scored exactly too (no downlink codec)."""
    assert all(torch.equal(server["state"][k], v) for k, v in clients["state"].items())  # training untouched
    for ours, theirs in zip(server["history"], clients["history"], strict=True):
        # training's traffic as it was; the scoring's apart
        assert (theirs["bytes_up"], theirs["bytes_down"]) == (ours["bytes_up"], ours["bytes_down"])
        assert theirs["bytes_validation"] > 0 and "bytes_validation" not in ours
        for key in ("val_oa", "val_aa", "val_kappa", "val_oa_before_statistics", "val_oa_before_calibration"):
            # the same pixels scored: at most one pixel apart (float order in other batches)
            if key in ours and (every_round or ours is server["history"][-1]):
                assert theirs[key] == pytest.approx(ours[key], abs=1.01 / pixels), key
        if every_round or ours is server["history"][-1]:
            # the global model's cross-entropy, from the clients' sums as from the server's own pass
            assert theirs["val_loss"] == pytest.approx(ours["val_loss"], rel=1e-4)
        assert theirs["validation_pixels"] == pixels


def test_fedavg_clients_score_their_own_pixels_as_the_server_would(tiny_federation):
    fed = tiny_federation
    # compressed downloads: a scoring pass that moved what the clients train from would change the model
    server, clients = both_ways(fed, num_rounds=2, downlink_compression=CODEC, calibration={})
    pixels = len(fed["test"]["labels"])
    # round 1 scored as the codec delivers the weights (its bytes: a coded delta), the last round exactly
    assert_same_model_and_scores(server, clients, pixels, every_round=False)
    assert 0 < clients["history"][0]["val_oa"] <= 1
    dense_server, dense_clients = both_ways(fed, num_rounds=2, calibration={})  # no downlink codec: every round exactly
    assert_same_model_and_scores(dense_server, dense_clients, pixels)
    assert [r["validation_clients"] for r in clients["history"]] == [3, 3]
    assert "validation_clients" not in server["history"][0]
    ups = [t for t in clients["traffic"] if t["payload"] == "validation"]
    classes = int(fed["spec"]["num_classes"])
    # three passes in the last round (before the statistics pass, before calibration, the final model)
    # the counts and one summed cross-entropy, float64
    assert len(ups) == 3 * (1 + 3) and all(t["bytes_sent"] == (classes * classes + 1) * 8 for t in ups)
    downs = [t for t in clients["traffic"] if t["payload"] == "validation weights"]
    assert len(downs) == len(ups) and all(t["direction"] == "down" for t in downs)


def test_feddiff_sites_score_with_their_partners_outputs(tiny_split_federation):
    fed = tiny_split_federation
    server, clients = both_ways(fed, algorithm="feddiff", min_clients=2, num_rounds=2,
                                client_data_dirs=[fed["features_dir"]], downlink_compression=CODEC,
                                exchange_compression=CODEC, compression=CODEC)
    assert_same_model_and_scores(server, clients, len(fed["test"]["labels"]), every_round=False)
    # one scorer per site (both of its clients hold the same pixels: each counted once)
    assert {r["validation_clients"] for r in clients["history"]} == {2}
    relayed = [t for t in clients["traffic"] if t["payload"] == "validation features"]
    assert relayed and all(t["bytes_sent"] == t["bytes_dense"] for t in relayed)  # uncoded: exact scores


def test_the_server_holds_no_validation_pixel_and_receives_only_counts(tiny_federation, tmp_path):
    fed = tiny_federation
    cfg = config(fed, validation="clients", num_rounds=1)
    job = RoundsJob(cfg, fed["test"])
    assert set(job.validation) <= {"num_classes", "class_names"}
    written = job.write(tmp_path)  # a deployment's server reads this file: no pixel, no label in it
    from fedrs.datasets import NpzDataset

    assert set(NpzDataset(written["validation_patches"]).load()) <= {"num_classes", "class_names"}
    grid = FakeGrid(3)
    run_rounds(grid, cfg, job.validation, 3)
    replies = [r for r in grid.received if r.metadata.message_type == "query.validation"]
    assert len(replies) == 2 * 3  # before the statistics pass, and the final model
    for reply in replies:
        arrays = reply.content["arrays"]
        assert list(arrays.keys()) == [CONFUSION, CROSS_ENTROPY]
        assert arrays[CROSS_ENTROPY].numpy().shape == (1,)  # one sum: no pixel's own loss leaves


def test_every_and_the_last_round(tiny_federation):
    _, clients = both_ways(tiny_federation, num_rounds=3, validation_every=2, statistics_pass=False)
    assert ["val_oa" in r for r in clients["history"]] == [False, True, True]
    _, last = both_ways(tiny_federation, num_rounds=2, validation_every=0, statistics_pass=False)
    assert ["val_oa" in r for r in last["history"]] == [False, True]


def test_clients_validation_needs_a_classifier_and_scorers(tiny_federation):
    with pytest.raises(ValueError, match="validation is 'everywhere'"):
        config(tiny_federation, validation="everywhere")
    with pytest.raises(ValueError, match="validation_every"):
        config(tiny_federation, validation_every=-1)
    # clients that hold no validation pixels (a partition made without them) cannot score
    fed = {**tiny_federation, "dir": str(tiny_federation["dir"])}
    grid = FakeGrid(3)
    for node in grid.contexts.values():
        node.node_config["partition-path"] = str(strip_validation(node, fed))
    with pytest.raises(ValueError, match="none of the 3 clients holds validation pixels"):
        started(fed, grid, validation="clients")


def strip_validation(node, fed):
    from pathlib import Path

    from fedrs.datasets import NpzDataset
    from fedrs.partition import VALIDATION_PREFIX

    source = Path(fed["dir"]) / f"client_{int(node.node_config['partition-id']):03d}.npz"
    bundle = {k: v for k, v in NpzDataset(str(source)).load().items() if not k.startswith(VALIDATION_PREFIX)}
    target = source.parent.parent / f"stripped_{source.name}"
    NpzDataset(str(target)).save(bundle)
    return target


def test_under_secagg_the_server_sees_only_the_sum_of_the_counts(tiny_federation):
    fed = tiny_federation
    overrides = dict(num_rounds=1, statistics_pass=False, secure_aggregation={}, eval_samples=None)
    plain = run_rounds(FakeGrid(3), config(fed, **overrides), fed["test"], 3)
    grid = FakeGrid(3)
    cfg = config(fed, validation="clients", **overrides)
    secure = run_rounds(grid, cfg, RoundsJob(cfg, fed["test"]).validation, 3)
    # the counts come back exactly from the quantised secure sum (rounded to whole pixels)
    pixels = len(fed["test"]["labels"])
    assert secure["history"][0]["val_oa"] == pytest.approx(plain["history"][0]["val_oa"], abs=1.01 / pixels)
    # no organisation's loss in the clear beside its hidden counts: no validation loss under SecAgg+
    assert "val_loss" in plain["history"][0] and "val_loss" not in secure["history"][0]
    assert secure["history"][0]["validation_pixels"] == len(fed["test"]["labels"])
    replies = [m for m in grid.received if m.metadata.message_type == "query.validation"]
    assert len(replies) == 3 and all(len(r) == 0 for m in replies for r in m.content.array_records.values())
    assert secure["history"][0]["secagg_sums"] == 2 + 1  # the round's two, and the counts'


def test_a_scorer_that_fails_leaves_training_as_it_was(tiny_federation, monkeypatch):
    from fedrs.federated import client_app
    from fedrs.federated.inprocess import HANDLERS

    def fails_on_client_1(msg, context):
        if int(context.node_config["partition-id"]) == 1:
            raise RuntimeError("no validation today")
        return client_app.validation(msg, context)

    monkeypatch.setitem(HANDLERS, "query.validation", fails_on_client_1)
    fed = tiny_federation
    # (a scorer failing alike round after round stops the run like any systematic failure: not here)
    server, clients = both_ways(fed, num_rounds=2, downlink_compression=CODEC, statistics_pass=False,
                                failure_tolerance=None)
    # its next download is still the compressed delta against the copy it trains from
    assert all(torch.equal(server["state"][k], v) for k, v in clients["state"].items())
    first = clients["history"][0]
    assert first["failed"] == [{"client_id": 1, "stage": "validation train", "reason": first["failed"][0]["reason"]}]
    assert first["validation_clients"] == 2 and 0 < first["validation_pixels"] < len(fed["test"]["labels"])


def test_a_model_scored_again_is_not_asked_for_again(tiny_federation):
    """A round that aggregates nothing keeps the global model: its scores are the last ones, and no
    second sum is formed whose senders could differ from the first by one organisation."""
    fed = tiny_federation
    cfg = config(fed, validation="clients", num_rounds=3, statistics_pass=False, failure_tolerance=None,
                 faults={"raise": [[2, 0], [2, 1], [2, 2]]})
    grid = FakeGrid(3)
    result = run_rounds(grid, cfg, RoundsJob(cfg, fed["test"]).validation, 3)
    first, second, _ = result["history"]
    assert not second["aggregated"] and second["val_oa"] == first["val_oa"]
    asked = [int(m.metadata.group_id) for m in grid.sent if m.metadata.message_type == "query.validation"]
    assert asked == [1, 1, 1, 3, 3, 3]


def test_a_sole_scorer_is_a_scorer():
    from fedrs.federated.algorithms import get_algorithm
    from fedrs.federated.server.config import FederatedConfig
    from fedrs.federated.server.validation import check_validation

    cfg = FederatedConfig(algorithm="fedavg", model={})
    clients = {0: {"modalities": ("hsi", "lidar"), "validation_samples": 4},
               1: {"modalities": ("hsi",), "validation_samples": 0}}
    check_validation(cfg, get_algorithm("fedavg"), clients)  # client 0 alone scores
    with pytest.raises(ValueError, match="privacy"):
        check_validation(FederatedConfig(algorithm="fedavg", model={}, privacy={"noise_multiplier": 1.0}),
                         get_algorithm("fedavg"), clients)
