"""``kedro run --pipelines=feddiff`` against a real federation on 127.0.0.1: a SuperLink with TLS
(a throw-away CA) and SuperNode authentication, two registered SuperNodes (one site: an HSI holder
and a LiDAR holder — the two-site relay and aggregation are tested in one process), each reading
only its own partition file and keeping its diffusion features in its own store. All three FedDiff
stages run as jobs on the SuperLink, the classifier's updates summed by Flower's SecAgg+; evaluation,
MLflow and the registry work as after a simulation — and give the same metrics as a run in one
process. One federation serves the whole test (each Flower message starts a ClientApp process, so a
FedDiff run costs minutes here). Every process started is stopped by its process group."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from fedrs.federated.engine import DeploymentRunFailed
from tests.conftest import INPROCESS, TINY_FEDDIFF, TINY_PARTITION
from tests.federated.loopback import Loopback

pytestmark = pytest.mark.integration
CLIENTS = "data/05_model_input/synthetic/modality_split/clients"


@pytest.fixture
def loopback(tmp_path):
    federation = Loopback(tmp_path / "flower")
    yield federation
    federation.stop()


def _run(project, pipelines: list[str], **kwargs) -> None:
    try:
        project.run(pipelines, **kwargs)
    finally:
        while mlflow.active_run() is not None:  # the next session opens its own MLflow run
            mlflow.end_run()


@pytest.mark.heavy(120)
def test_feddiff_runs_all_three_stages_on_an_authenticated_federation(tiny_feddiff, loopback, tmp_path):
    project, p = tiny_feddiff, tiny_feddiff.path
    # fewer Flower messages (each starts a ClientApp process): one classifier round, no statistics passes
    # and no calibration pass (their handlers run through the same transport; tested in one process)
    conf = json.loads(json.dumps(TINY_FEDDIFF))
    for stage in ("diffusion", "classifier"):
        conf["feddiff"][stage]["federated"]["statistics_pass"] = False
    conf["feddiff"]["classifier"]["federated"]["num_rounds"] = 1
    conf["feddiff"]["classifier"]["federated"]["calibration"] = None
    # the clients' loss curves would leave them outside the secure sum: temperature scaling is refused beside it
    conf["feddiff"]["classifier"]["federated"]["temperature"] = None
    # the classifier's updates through Flower's SecAgg+ (its four stages are train messages between the
    # SuperLink and the SuperNodes); uploads go dense, as secure sums need — the exchange keeps its codec
    conf["feddiff"]["classifier"]["federated"]["secure_aggregation"] = {}
    conf["feddiff"]["classifier"]["federated"]["compression"] = None
    project.write_conf("local", "parameters_feddiff.yml", conf)
    one_site = json.loads(json.dumps(TINY_PARTITION))
    one_site["modality_split"]["partition"]["num_sites"] = 1  # half the SuperNodes, half the ClientApp processes
    project.write_conf("local", "parameters_partition.yml", one_site)
    _run(project, ["data"])
    manifest = json.loads(p("data/05_model_input/synthetic/modality_split/manifest.json").read_text())
    assert len(manifest["clients"]) == 2
    loopback.start_superlink()
    keys = {}
    for client in manifest["clients"]:
        cid = int(client["client_id"])
        keys[cid] = loopback.node_key(f"org{cid}")
        loopback.start_supernode(f"org{cid}", {"partition-path": str(p(CLIENTS, f"client_{cid:03d}.npz")),
                                               "feature-cache-dir": str(tmp_path / f"org{cid}" / "features")},
                                 keys[cid])
    # who may not join: a key nobody registered, and a node that does not trust the coordinator's CA
    stranger = loopback.start_supernode("stranger", {"partition-path": str(p(CLIENTS, "client_000.npz"))},
                                        loopback.node_key("stranger", register=False), retries=2)
    untrusting = loopback.start_supernode("untrusting", {"partition-path": str(p(CLIENTS, "client_000.npz"))},
                                          keys[0], ca=False, retries=2)
    project.write_conf("local", "parameters_federation.yml",
                       {"federation": {"engine": "deployment", "deployment": loopback.deployment}})
    _run(project, ["feddiff"])

    history = json.loads(p("data/07_model_output/synthetic/feddiff/history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1], loopback.tail()
    assert all(r["accepted"] == [0, 1] for r in history["rounds"])
    # one site: the fusion and heads are one secure sum over both organisations; each branch has one holder,
    # which no secure sum can hide, so its tensors keep their global values (as the docs say)
    (row,) = history["rounds"]
    # (each as two sums: the weights, and the BatchNorm statistics in their own units)
    assert row["secagg_sums"] == 2 and row["secagg_sums_skipped"] == 4 + 1 and row["secagg_sums_failed"] == 0
    # the clients' validation: one site, one scorer, whose counts no secure sum can hide — so none is formed
    # and the round goes unscored rather than show the server one organisation's counts
    assert "val_oa" not in row and row["validation_pixels"] == 0
    uploads = pd.read_csv(p("data/07_model_output/synthetic/feddiff/traffic.csv"))
    assert (uploads[(uploads["payload"] == "weights") & (uploads["direction"] == "up")]["bytes_sent"] == 0).all()
    diffusion = json.loads(p("data/07_model_output/synthetic/feddiff/diffusion_history.json").read_text())
    assert diffusion["stages"]["hsi"][0]["accepted"] == [0] and diffusion["stages"]["lidar"][0]["accepted"] == [1]
    # stage 2 ran at the organisations: each store holds its own features, the project's store none
    for cid in range(2):
        assert len(list((tmp_path / f"org{cid}" / "features").glob("*.npy"))) == 2  # its training, validation pixels
    assert not list(p("data/04_feature/synthetic").glob("feddiff_feature_cache/*.npy"))
    traffic = pd.read_csv(p("data/07_model_output/synthetic/feddiff/traffic.csv"))
    assert sorted(traffic[traffic["payload"] == "unet"]["client_id"]) == [0, 1]
    feats = traffic[traffic["payload"] == "features"]
    # the round's exchange went through the low-rank codec: each branch output, down and up
    assert len(feats) == 4 and (feats["bytes_sent"] < feats["bytes_dense"]).all()
    assert not (traffic["payload"] == "calibration").any()
    # four jobs went through the SuperLink: two DDPMs, the features, the classifier
    jobs = sorted(d.name.rsplit("-", 3)[0] for d in p("data/06_models/synthetic/feddiff/deployment").iterdir())
    assert jobs == ["ddpm_hsi", "ddpm_lidar", "feddiff", "feddiff_features"]
    deployed = json.loads(p("data/08_reporting/synthetic/feddiff/metrics.json").read_text())

    mlflow.set_tracking_uri(f"sqlite:///{p('mlflow.db')}")
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("fedrs").experiment_id], order_by=["start_time DESC"])[0]
    assert run.data.params["federation.engine"] == "deployment" and "feddiff.oa" in run.data.metrics
    versions = client.search_model_versions("name='feddiff'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id

    # neither outsider was ever let in: both gave up after their retries
    for proc in (stranger, untrusting):
        proc.wait(timeout=120)
        assert proc.returncode != 0, loopback.tail()
    online = [n for n in loopback.registered_nodes() if str(n.get("status", "")).lower() == "online"]
    assert len(online) == 2

    # a ServerApp that fails on the SuperLink fails the Kedro node, with its error (a setting the
    # round loop refuses before it asks any node: no ClientApp process is started for it)
    failing = json.loads(json.dumps(conf))
    failing["feddiff"]["classifier"]["federated"]["weighting"] = "median"
    project.write_conf("local", "parameters_feddiff.yml", failing)
    with pytest.raises(DeploymentRunFailed, match="weighting is 'median'"):
        _run(project, ["feddiff"], from_nodes=["feddiff.train_classifier"])
    project.write_conf("local", "parameters_feddiff.yml", conf)

    # the same pipeline in one process: the same metrics for the same seed (the in-process engine gives
    # Flower's simulation engine's models bit for bit: tests/federated/test_simulation.py)
    project.write_conf("local", "parameters_federation.yml", INPROCESS)
    _run(project, ["feddiff"])
    simulated = json.loads(p("data/08_reporting/synthetic/feddiff/metrics.json").read_text())
    for key in ("oa", "aa", "kappa"):
        assert deployed[key] == pytest.approx(simulated[key], abs=1e-6), key
