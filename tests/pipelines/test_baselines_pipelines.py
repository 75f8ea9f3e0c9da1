"""Algorithm pipelines through KedroSession: a real Flower simulation (FedAvg: 3 clients, 2 rounds,
tiny model; the other runs on the in-process engine), evaluation outputs, and what kedro-mlflow put
in the SQLite store."""

import copy
import json
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from fedrs.datasets import TorchArtifactDataset
from fedrs.registry import load_registered_artifact
from fedrs.registry import main as registry_main
from tests.conftest import INPROCESS, REPO, TINY_FEDCMI, TINY_FEDDIFF, TINY_PARTITION

pytestmark = pytest.mark.integration


@pytest.mark.heavy(35)
def test_fedavg_simulation_from_a_kedro_session(tiny_baselines):
    project = tiny_baselines
    project.run(["fedavg"])
    p = project.path
    history = json.loads(p("data/07_model_output/synthetic/fedavg/history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2]
    assert all(r["sampled"] == [0, 1, 2] and r["bytes_down"] > 0 for r in history["rounds"])
    traffic = pd.read_csv(p("data/07_model_output/synthetic/fedavg/traffic.csv"))
    # 2 rounds × 3 clients × (down, up), then the statistics pass: one more download and upload each; and the
    # clients' validation (the default): the exact global weights down and the counts up, per client, after
    # round 1 and twice in round 2 (before the statistics pass, and the final model)
    assert len(traffic) == 18 + 18 and set(traffic["direction"]) == {"down", "up"}
    counts = traffic[traffic["payload"] == "validation"]
    # a 10-class confusion matrix and one summed cross-entropy, float64
    assert len(counts) == 9 and set(counts["direction"]) == {"up"} and set(counts["bytes_sent"]) == {(10 * 10 + 1) * 8}
    assert all(r["validation_clients"] == 3 and r["val_loss"] > 0 for r in history["rounds"])
    statistics = traffic[traffic["payload"] == "statistics"]
    assert len(statistics) == 3 and set(statistics["round"]) == {2}
    metrics = json.loads(p("data/08_reporting/synthetic/fedavg/metrics.json").read_text())
    assert 0.0 <= metrics["oa"] <= 1.0 and set(metrics["variants"]) == {"hsi_zero_filled", "lidar_zero_filled"}
    for figure in ("confusion", "classification_map", "curves"):
        assert p(f"data/08_reporting/synthetic/fedavg/{figure}.png").stat().st_size > 5_000
    artifact = TorchArtifactDataset(str(p("data/06_models/synthetic/fedavg/model.pt"))).load()
    assert artifact["algorithm"] == "fedavg" and artifact["modalities"] == ["hsi", "lidar"]

    mlflow.set_tracking_uri(f"sqlite:///{p('mlflow.db')}")
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("fedrs").experiment_id], order_by=["start_time DESC"])[0]
    for key in ("fedavg.oa", "fedavg.aa", "fedavg.kappa", "fedavg.val_oa", "fedavg.hsi_zero_filled.oa",
                "fedavg.round.val_oa",
                "fedavg.round.bytes_up", "fedavg.wall_seconds"):
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fedavg.round.val_oa")] == [1, 2]
    assert run.data.params["baseline.federated.num_rounds"] == "2"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "fedavg")}
    assert {"fedavg/confusion.png", "fedavg/classification_map.png", "fedavg/curves.png", "fedavg/MLmodel"} <= logged
    versions = client.search_model_versions("name='fedavg'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id
    model = mlflow.pytorch.load_model("models:/fedavg/1")
    assert model.spec.modalities == ("hsi", "lidar")
    # the hook named the only version champion; the artefact beside it maps the scene again
    assert int(client.get_model_version_by_alias("fedavg", "champion").version) == 1
    assert load_registered_artifact("models:/fedavg@champion")["state"].keys() == artifact["state"].keys()

    # a second registry run (another seed): the champion is the version whose run has the higher
    # validation OA (ties: the newest), whatever the test OA says
    while mlflow.active_run() is not None:
        mlflow.end_run()
    project.write_conf("local", "parameters_federation.yml", INPROCESS)  # the first run was Flower's simulation
    project.run(["fedavg"], params={"seed": 3})
    mlflow.set_tracking_uri(f"sqlite:///{p('mlflow.db')}")
    scored = [(client.get_run(v.run_id).data.metrics["fedavg.val_oa"], int(v.version))
              for v in client.search_model_versions("name='fedavg'")]
    assert len(scored) == 2
    assert int(client.get_model_version_by_alias("fedavg", "champion").version) == max(scored)[1]
    registry_main(["map", "models:/fedavg@champion", "--out", str(p("champion.png"))])
    assert p("champion.png").stat().st_size > 5_000


def test_centralized_and_local_pipelines(tiny_baselines):
    tiny_baselines.run(["centralized", "local"])
    p = tiny_baselines.path
    central = json.loads(p("data/07_model_output/synthetic/centralized/history.json").read_text())
    assert len(central["rounds"]) == 2 and all(r["bytes_up"] == 0 for r in central["rounds"])
    local = json.loads(p("data/07_model_output/synthetic/local/history.json").read_text())
    assert len(local["clients"]) == 3
    assert local["worst_oa"] <= local["mean_oa"] + 1e-12 and local["mean_oa"] <= local["best_oa"] + 1e-12
    for algorithm in ("centralized", "local"):
        assert json.loads(p(f"data/08_reporting/synthetic/{algorithm}/metrics.json").read_text())["num_samples"] > 0


def test_fedcmi_pipeline_end_to_end(tiny_baselines):
    tiny_baselines.write_conf("local", "parameters_fedcmi.yml", TINY_FEDCMI)
    tiny_baselines.write_conf("local", "parameters_federation.yml", INPROCESS)
    tiny_baselines.run(["fedcmi"])
    p = tiny_baselines.path
    history = json.loads(p("data/07_model_output/synthetic/fedcmi/history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2] and all(
        r["accepted"] == [0, 1, 2] for r in history["rounds"]
    )
    metrics = json.loads(p("data/08_reporting/synthetic/fedcmi/metrics.json").read_text())
    assert set(metrics["variants"]) == {"hsi_infiltrated", "hsi_zero_filled", "lidar_infiltrated", "lidar_zero_filled"}
    assert 0.0 <= metrics["per_class_spread"] <= 1.0
    artifact = TorchArtifactDataset(str(p("data/06_models/synthetic/fedcmi/model.pt"))).load()
    assert artifact["spec"]["dim"] == 16 and artifact["algorithm"] == "fedcmi"


@pytest.mark.heavy(60)
def test_feddiff_pipeline_end_to_end(tiny_feddiff):
    tiny_feddiff.run(["feddiff"])
    p = tiny_feddiff.path
    diffusion = json.loads(p("data/07_model_output/synthetic/feddiff/diffusion_history.json").read_text())
    assert set(diffusion["stages"]) == {"hsi", "lidar"} and all(len(r) == 1 for r in diffusion["stages"].values())
    # stage 1 federated each U-Net over the holders of its modality only (clients 0, 2 hold HSI)
    assert diffusion["stages"]["hsi"][0]["accepted"] == [0, 2] and diffusion["stages"]["lidar"][0]["accepted"] == [1, 3]
    # each DDPM round is scored on validation patches: the noise loss and the denoising gain per timestep,
    # in the history and in MLflow (T = 50: t = 1, 5, 15, 30)
    first = diffusion["stages"]["hsi"][0]
    assert {f"val_psnr_gain_t{t}" for t in (1, 5, 15, 30)} <= set(first) and "val_l1" in first
    # and by the linear probe of its features at the feature timesteps against the raw bands
    assert {"val_probe_raw", "val_probe_t5", "val_probe_t20"} <= set(first)
    mlflow.set_tracking_uri(f"sqlite:///{p('mlflow.db')}")
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("fedrs").experiment_id], order_by=["start_time DESC"])[0]
    curves = {"feddiff.diffusion.hsi.round.val_psnr_gain_t5", "feddiff.diffusion.lidar.round.val_l1",
              "feddiff.diffusion.hsi.round.val_probe_t5"}
    assert curves <= set(run.data.metrics)
    features = json.loads(p("data/04_feature/synthetic/feddiff_features_manifest.json").read_text())
    assert features["timesteps"] == [5, 20] and len(features["clients"]) == 4
    assert (
        features["reused_from_cache"] == []
        and len(list(p("data/04_feature/synthetic/feddiff_feature_cache").glob("*.npy"))) == 4 * 2  # and validation
    )
    history = json.loads(p("data/07_model_output/synthetic/feddiff/history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2]
    assert all(r["accepted"] == [0, 1, 2, 3] for r in history["rounds"])
    assert all(r["client_seconds"] > 0 and r["wait_seconds"] > 0 for r in history["rounds"])  # exchange + train
    traffic = pd.read_csv(p("data/07_model_output/synthetic/feddiff/traffic.csv"))
    feats = traffic[traffic["payload"] == "features"]
    # 4 clients × up/down × 2 rounds, and again in each of the two statistics passes after round 2 — coded;
    # then once more in the calibration pass, uncoded (dense_exchange)
    coded = feats[feats["bytes_sent"] < feats["bytes_dense"]]
    assert len(coded) == 32 and len(feats) == 40
    assert (traffic["payload"] == "statistics").sum() == 8 and history["rounds"][-1]["statistics_from"] == [0, 1, 2, 3]
    # classifier calibration (FedDiff's default) ended the run: one client per site sent its class statistics
    # (each pixel once), head1 retrained
    assert (traffic["payload"] == "calibration").sum() == 2 and history["rounds"][-1]["calibration_clients"] == 2
    # the clients scored each round (the default): one per site sends its counts, after the exchange of the
    # validation pixels' outputs — uncoded, so a pixel is scored as the assembled model scores it
    assert all(r["validation_clients"] == 2 and r["validation_pixels"] > 0 for r in history["rounds"])
    relayed = traffic[traffic["payload"] == "validation features"]
    assert len(relayed) > 0 and (relayed["bytes_sent"] == relayed["bytes_dense"]).all()
    # and the sum of their counts is the evaluation's score of the final model on all validation pixels
    last, central = history["rounds"][-1], json.loads(p("data/08_reporting/synthetic/feddiff/metrics.json").read_text())
    assert last["val_oa"] == pytest.approx(central["validation"]["oa"], abs=1.01 / last["validation_pixels"])
    assert "val_oa_before_calibration" in history["rounds"][-1] and history["rounds"][-1]["calibration_classes"] > 0
    # stage 2 ran on the clients: each was sent its modality's U-Net and sent nothing back but shapes
    unets = traffic[traffic["payload"] == "unet"]
    assert sorted(unets["client_id"]) == [0, 1, 2, 3] and (unets["direction"] == "down").all()
    metrics = json.loads(p("data/08_reporting/synthetic/feddiff/metrics.json").read_text())
    assert 0.0 <= metrics["oa"] <= 1.0 and metrics["algorithm"] == "feddiff"
    # the whole run's traffic counts stage 2's U-Net downloads and stage 1's rounds
    assert metrics["run"]["bytes_sent"] > int(unets["bytes_sent"].sum()) + int(feats["bytes_sent"].sum())
    assert p("data/08_reporting/synthetic/feddiff/classification_map.png").stat().st_size > 5_000
    artifact = TorchArtifactDataset(str(p("data/06_models/synthetic/feddiff/model.pt"))).load()
    assert set(artifact["unets"]) == {"hsi", "lidar"} and artifact["spec"]["timesteps"] == [5, 20]
    # the reconstruction attack on the relayed outputs runs on this model (bench/exchange_attack.py)
    env = {**os.environ, "FEDRS_BENCH_RESULTS": str(p("bench"))}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "exchange_attack.py"), "--project", str(p()),
                           "--epochs", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    attack = json.loads(p("bench/exchange_attack_hsi.json").read_text())
    conditions = [r["condition"] for r in attack["rows"]]
    assert conditions[0] == "floor: the attacker's mean patch" and len(conditions) == 10
    assert conditions[1] == "raw branch outputs (as the calibration pass relays them: uncoded)"
    left = {r["condition"].split("attacker: ", 1)[-1]: r["noise_left"] for r in attack["rows"] if "noise_left" in r}
    # the seed-aware attacker removes the deterministic test noise, and doubles the noise it does not know
    assert left["deterministic test noise (`deterministic_noise: true`)"] < 1e-3
    assert left["noise from the victim's OS (as run)"] > 1.2
    assert all(-1.0 <= r["correlation"] <= 1.0 for r in attack["rows"])
    # the linear probe of what the diffusion models know runs on the same run (bench/diffusion_probe.py)
    done = subprocess.run([sys.executable, str(REPO / "bench" / "diffusion_probe.py"), "--project", str(p()),
                           "--scene", "synthetic", "--label", "tiny"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "validation OA" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    probed = json.loads(p("bench/diffusion_probe_synthetic.json").read_text())["rows"]
    inputs = {(r["modality"], r["input"]) for r in probed}
    assert ("hsi", "diffusion t=20, flattened") in inputs and ("lidar", "raw, centre pixel") in inputs
    assert ("lidar", "raw, window flattened") in inputs
    assert len(inputs) == 2 * (3 + 2 * 2) and all(0.0 <= r["val_oa"] <= 1.0 for r in probed)


@pytest.mark.heavy(30)
def test_feddiff_with_lidar_diffusion_features_only(tiny_feddiff):
    """``feddiff.diffusion.modalities: [lidar]``: stage 1 trains the LiDAR DDPM alone, stage 2 sends a
    U-Net to the LiDAR holders only, and stage 3's HSI branch runs without a diffusion stem."""
    conf = copy.deepcopy(TINY_FEDDIFF)
    conf["feddiff"]["diffusion"]["modalities"] = ["lidar"]
    conf["feddiff"]["classifier"]["federated"]["num_rounds"] = 1
    tiny_feddiff.write_conf("local", "parameters_feddiff.yml", conf)
    tiny_feddiff.run(["feddiff"], to_nodes=["feddiff.evaluate"])
    p = tiny_feddiff.path
    diffusion = json.loads(p("data/07_model_output/synthetic/feddiff/diffusion_history.json").read_text())
    assert set(diffusion["stages"]) == {"lidar"}
    traffic = pd.read_csv(p("data/07_model_output/synthetic/feddiff/traffic.csv"))
    assert sorted(traffic[traffic["payload"] == "unet"]["client_id"]) == [1, 3]  # the LiDAR holders
    artifact = TorchArtifactDataset(str(p("data/06_models/synthetic/feddiff/model.pt"))).load()
    assert set(artifact["unets"]) == {"lidar"} and artifact["spec"]["diffusion_modalities"] == ["lidar"]
    assert any(".stem." in k for k in artifact["state"] if k.startswith("lidar_branch."))
    assert not any(".stem." in k for k in artifact["state"] if k.startswith("hsi_branch."))
    history = json.loads(p("data/07_model_output/synthetic/feddiff/history.json").read_text())
    assert history["rounds"][0]["accepted"] == [0, 1, 2, 3]
    metrics = json.loads(p("data/08_reporting/synthetic/feddiff/metrics.json").read_text())
    assert 0.0 <= metrics["oa"] <= 1.0


@pytest.mark.heavy(20)
def test_feddiff_without_any_ddpm(tiny_feddiff):
    """``feddiff.diffusion.modalities: []``: stage 1 trains nothing, stage 2 starts no federation and
    sends no U-Net, and the classifier takes no diffusion features — at the patch size it would have
    had with them."""
    conf = copy.deepcopy(TINY_FEDDIFF)
    conf["feddiff"]["diffusion"]["modalities"] = []
    conf["feddiff"]["classifier"]["federated"]["num_rounds"] = 1
    tiny_feddiff.write_conf("local", "parameters_feddiff.yml", conf)
    tiny_feddiff.run(["feddiff"], to_nodes=["feddiff.evaluate"])
    p = tiny_feddiff.path
    diffusion = json.loads(p("data/07_model_output/synthetic/feddiff/diffusion_history.json").read_text())
    assert diffusion["stages"] == {}
    features = json.loads(p("data/04_feature/synthetic/feddiff_features_manifest.json").read_text())
    assert features["unets"] == {} and features["clients"] == {} and features["traffic"] == []
    assert not any(p("data/04_feature/synthetic/feddiff_feature_cache").iterdir())  # the store, empty (a DVC out)
    traffic = pd.read_csv(p("data/07_model_output/synthetic/feddiff/traffic.csv"))
    assert not (traffic["payload"] == "unet").any()
    artifact = TorchArtifactDataset(str(p("data/06_models/synthetic/feddiff/model.pt"))).load()
    assert artifact["unets"] == {} and artifact["spec"]["use_diffusion"] is False
    assert artifact["spec"]["unet_size"] == 8 and artifact["spec"]["diffusion_modalities"] == []
    assert not any(".stem." in k for k in artifact["state"])
    history = json.loads(p("data/07_model_output/synthetic/feddiff/history.json").read_text())
    assert history["rounds"][0]["accepted"] == [0, 1, 2, 3] and history["rounds"][0]["val_loss"] > 0
    metrics = json.loads(p("data/08_reporting/synthetic/feddiff/metrics.json").read_text())
    assert 0.0 <= metrics["oa"] <= 1.0 and metrics["run"]["bytes_sent"] == int(
        sum(r["bytes_up"] + r["bytes_down"] for r in history["rounds"]))  # the classifier's rounds alone


def test_feddiff_on_whole_sites_federates_its_classifier_without_the_split(tiny_feddiff):
    """``modality_split.partition.split_modalities: false``: each site is one client holding both
    modalities (the split's ablation): FedDiff's classifier trained by FedAvg over the sites, every
    branch live on every client, nothing relayed between partners."""
    conf = copy.deepcopy(TINY_FEDDIFF)
    conf["feddiff"]["diffusion"]["modalities"] = []
    conf["feddiff"]["classifier"]["federated"]["num_rounds"] = 2
    tiny_feddiff.write_conf("local", "parameters_feddiff.yml", conf)
    tiny_feddiff.write_conf("local", "parameters_partition.yml", {
        **TINY_PARTITION, "modality_split": {"partition": {"min_samples_per_client": 2, "split_modalities": False}}})
    tiny_feddiff.run(["feddiff"], to_nodes=["feddiff.evaluate"])
    p = tiny_feddiff.path
    manifest = json.loads(p("data/05_model_input/synthetic/modality_split/manifest.json").read_text())
    assert [(c["modalities"], c["site"]) for c in manifest["clients"]] == [(["hsi", "lidar"], 0), (["hsi", "lidar"], 1)]
    assert all(c["validation_samples"] > 0 for c in manifest["clients"])
    history = json.loads(p("data/07_model_output/synthetic/feddiff/history.json").read_text())
    assert history["algorithm"] == "feddiff_sites"
    assert [r["accepted"] for r in history["rounds"]] == [[0, 1], [0, 1]]
    assert history["rounds"][-1]["val_loss"] > 0
    traffic = pd.read_csv(p("data/07_model_output/synthetic/feddiff/traffic.csv"))
    assert "weights" in set(traffic["payload"]) and "features" not in set(traffic["payload"])  # no relay
    artifact = TorchArtifactDataset(str(p("data/06_models/synthetic/feddiff/model.pt"))).load()
    assert artifact["algorithm"] == "feddiff_sites"
    assert any(k.startswith("hsi_branch.") for k in artifact["state"])
    assert any(k.startswith("lidar_branch.") for k in artifact["state"])
    metrics = json.loads(p("data/08_reporting/synthetic/feddiff/metrics.json").read_text())
    assert 0.0 <= metrics["oa"] <= 1.0


@pytest.mark.heavy(25)
def test_centralized_feddiff_pipeline(tiny_baselines):
    tiny_baselines.write_conf(
        "local",
        "parameters_feddiff.yml",
        {
            "feddiff": {
                "diffusion": {
                    "model": {"base_channels": 8, "steps": 50},
                    "train": {"epochs": 1, "batch_size": 32},
                    "federated": {"num_rounds": 1, "eval_samples": 64},
                },
                "features": {"timesteps": [5]},
                "classifier": {
                    "train": {"epochs": 1, "batch_size": 16},
                    "federated": {"num_rounds": 2, "eval_samples": 300},
                },
            }
        },
    )
    tiny_baselines.run(["feddiff_centralized"])
    p = tiny_baselines.path
    history = json.loads(p("data/07_model_output/synthetic/feddiff_centralized/history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2] and all(r["bytes_up"] == 0 for r in history["rounds"])
    metrics = json.loads(p("data/08_reporting/synthetic/feddiff_centralized/metrics.json").read_text())
    assert metrics["algorithm"] == "feddiff_centralized" and 0.0 <= metrics["oa"] <= 1.0

