"""The report pipeline over small fixture results written where the algorithm pipelines write theirs."""

import base64
import json
import re

import mlflow
import numpy as np
import pandas as pd
import pytest

from fedrs.datasets import NpzDataset
from fedrs.results import run_summary


def _write_results(project, scene, name, oa, rng, modalities=("hsi", "lidar"), rounds=3):
    labels = np.maximum(scene["train_labels"], scene["test_labels"])
    k = len(scene["class_names"])
    report = {"oa": oa, "aa": oa - 0.02, "kappa": oa - 0.05, "per_class_spread": 0.3, "algorithm": name,
              "modalities": list(modalities), "per_class": {c: oa for c in scene["class_names"]},
              "confusion": (np.eye(k, dtype=int) * 5 + 1).tolist(),
              "variants": {"lidar_zero_filled": {"oa": oa / 2}} if len(modalities) == 2 else {}}
    history = {"algorithm": name, "wall_seconds": 12.5, "peak_rss_mb": 800.0,
               "rounds": [{"round": r, "val_oa": oa * r / rounds, "val_aa": oa, "bytes_up": 1000, "bytes_down": 2000,
                           "bytes_up_dense": 4000, "bytes_down_dense": 2000} for r in range(1, rounds + 1)]}
    report["run"] = run_summary(history)  # what the evaluation node writes beside the scores
    reporting = project.path("data/08_reporting/synthetic", name)
    reporting.mkdir(parents=True)
    (reporting / "metrics.json").write_text(json.dumps(report))
    output = project.path("data/07_model_output/synthetic", name)
    output.mkdir(parents=True)
    noisy = np.where(rng.random(labels.shape) < 0.2, rng.integers(1, k + 1, labels.shape), labels)
    NpzDataset(str(output / "prediction.npz")).save({"prediction": noisy.astype(np.int16)})


@pytest.mark.heavy(20)
def test_report_compares_every_algorithm_with_results(kedro_project):
    with pytest.raises(Exception) as nothing:  # no algorithm has run yet
        kedro_project.run(["ingest", "report"])
    assert "No evaluated algorithm" in str(nothing.value)
    scene = kedro_project.catalog().load("scene")
    rng = np.random.default_rng(0)
    for name, oa, mods in (("feddiff", 0.9, ("hsi", "lidar")), ("fedavg", 0.8, ("hsi", "lidar")),
                           ("fedavg_hsi", 0.5, ("hsi",))):
        _write_results(kedro_project, scene, name, oa, rng, mods)
    # a fresh clone: the metrics files (in git) but no prediction of fedavg_hsi (DVC's); its rows stay
    kedro_project.path("data/07_model_output/synthetic/fedavg_hsi/prediction.npz").unlink()
    kedro_project.run(["report"])
    out = kedro_project.path("data/08_reporting/synthetic/report")
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["algorithm"]) == ["feddiff", "fedavg", "fedavg_hsi"]  # the configured order
    assert sorted(p.name for p in (out / "rounds").iterdir()) == ["fedavg.csv", "fedavg_hsi.csv", "feddiff.csv"]
    rounds = pd.read_csv(out / "rounds" / "feddiff.csv")
    assert list(rounds["round"]) == [1, 2, 3] and rounds["mb_cumulative"].iloc[-1] == pytest.approx(9000 / 1e6)
    assert table.loc[0, "mb_sent"] == pytest.approx(9000 / 1e6) and table.loc[0, "compression"] == pytest.approx(2.0)
    page = (out / "report.html").read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 4 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert all(f"<td>{n}</td>" in page for n in ("feddiff", "fedavg", "fedavg_hsi"))
    markdown = (out / "report.md").read_text()
    for figure in ("curves", "maps", "confusion", "modalities"):
        assert f"(figures/{figure}.png)" in markdown and (out / "figures" / f"{figure}.png").stat().st_size > 5_000
    # and the same files are in the MLflow run
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project.path('mlflow.db')}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    logged = {a.path for r in runs for a in mlflow.MlflowClient().list_artifacts(r.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/comparison.csv"} <= logged
    # a DP sweep of bench/privacy_curves.py beside the results: its section and the OA-against-ε figure
    sweep = {"algorithm": "fedavg", "rows": [
        {"setting": "no DP", "sigma": None, "epsilon": None, "oa": 0.8, "aa": 0.7, "kappa": 0.7},
        {"setting": "σ = 1, C = 0.8", "sigma": 1.0, "epsilon": 31.1, "oa": 0.3, "aa": 0.2, "kappa": 0.2},
        {"setting": "σ = 4, C = 0.8", "sigma": 4.0, "epsilon": 5.5, "oa": 0.1, "aa": 0.1, "kappa": 0.0}]}
    privacy = kedro_project.path("data/08_reporting/synthetic/privacy")
    privacy.mkdir(parents=True)
    (privacy / "fedavg.json").write_text(json.dumps(sweep))
    kedro_project.run(["report"])
    markdown = (out / "report.md").read_text()
    assert "## Differential privacy: accuracy against ε" in markdown
    assert "| fedavg | σ = 4, C = 0.8 | 5.50 |" in markdown
    assert "(figures/privacy.png)" in markdown and (out / "figures" / "privacy.png").stat().st_size > 5_000
    assert len(re.findall(r"data:image/png;base64,", (out / "report.html").read_text())) == 5
