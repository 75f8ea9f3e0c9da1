"""The registered MLflow model: logged with the installed versions as its requirements (no
inference subprocess), loadable back as the same torch module."""

from importlib import metadata
from pathlib import Path

import mlflow
import torch

from fedrs.datasets.mlflow_model import REQUIREMENTS, RegisteredModelDataset, pinned_requirements
from fedrs.federated.algorithms import get_algorithm


def test_the_model_is_registered_with_the_installed_versions_and_loads_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    torch.manual_seed(0)
    model = get_algorithm("fedavg").build_model({"bands": 6, "lidar_channels": 1, "num_classes": 3, "width": 4,
                                                 "dim": 8}).eval()
    dataset = RegisteredModelDataset("mlflow.pytorch", save_args={"name": "fedavg", "registered_model_name": "fedavg",
                                                                  "serialization_format": "pickle"})
    try:
        dataset.save(model)
    finally:
        mlflow.end_run()
    pinned = pinned_requirements()
    assert [p.split("==")[0] for p in pinned] == list(REQUIREMENTS)
    assert pinned[-1] == f"torch=={metadata.version('torch').split('+')[0]}" and "+" not in "".join(pinned)
    info = dataset.model_info
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "model")))
    assert (local / "requirements.txt").read_text().split() == pinned
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions("name='fedavg'")] == ["1"]
    loaded = mlflow.pytorch.load_model(info.model_uri).eval()
    x = {"hsi": torch.randn(2, 6, 7, 7), "lidar": torch.randn(2, 1, 7, 7)}
    torch.testing.assert_close(loaded(**x), model(**x))


def test_stated_requirements_in_the_catalog_win():
    dataset = RegisteredModelDataset("mlflow.pytorch", save_args={"name": "m", "pip_requirements": ["torch"]})
    assert dataset._save_args["pip_requirements"] == ["torch"]
