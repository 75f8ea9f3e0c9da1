"""Shared fixtures: tiny seeded scenes, throw-away Kedro projects, the shared real datasets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# A small synthetic scene that still has every class: integration tests run in seconds.
TINY_SCENE = {
    "seed": 7,
    "size": 64,
    "bands": 16,
    "train_per_class": 6,
    "n_buildings": 20,
    "n_tree_clusters": 10,
    "n_plazas": 5,
}

# Tiny algorithm settings (conf/local overrides) shared by the pipeline and DVC tests
TINY_PARTITION = {
    "modality_split": {"partition": {"min_samples_per_client": 2}},
    "horizontal": {"partition": {"num_clients": 3, "scheme": "iid", "multimodal_ratio": 1.0,
                                 "min_samples_per_client": 2}},
}
TINY_BASELINES = {"baseline": {
    "model": {"width": 8, "dim": 16}, "train": {"epochs": 1, "batch_size": 8},
    "federated": {"num_rounds": 2, "min_clients": 1, "eval_samples": 300},
    "resources": {"total_cpus": 2},
}}
TINY_FEDCMI = {"fedcmi": {"training": {"model": {"dim": 16}}}}
# the pipeline tests' federated runs go through the in-process engine (no Ray start-up, ~25 s a run on
# 2 cores); tests/federated/test_simulation.py and the FedAvg pipeline test run Flower's simulation engine
INPROCESS = {"federation": {"engine": "inprocess"}}
TINY_FEDDIFF = {"feddiff": {
    # the paper's recipe (both DDPMs) exercises every stage-1 path; the default, LiDAR alone, has its own test
    "diffusion": {"modalities": ["hsi", "lidar"],
                  "model": {"base_channels": 8, "steps": 50}, "train": {"epochs": 1, "batch_size": 32},
                  "federated": {"num_rounds": 1, "eval_samples": 64,
                                "probe": {"timesteps": [5, 20], "min_client_pixels": 3}}},
    "features": {"timesteps": [5, 20]},
    # the tiny scene's sites hold 2–4 training pixels of a class: below the default minimum of 5 no class
    # would be calibrated; 3 is the floor (tests/federated/test_calibration.py covers the minimum itself)
    "classifier": {"train": {"epochs": 1, "batch_size": 16},
                   "federated": {"num_rounds": 2, "eval_samples": 300, "calibration": {"min_client_pixels": 3}}},
    "resources": {"total_cpus": 2},
}}

for key, value in {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MPLBACKEND": "Agg",
}.items():
    os.environ.setdefault(key, value)


def slices_for_workers(costs: list[float | None], workers: int) -> list[int]:
    """The order (indices into ``costs``) that starts the long tests first, spread over ``workers``:
    xdist's work-stealing scheduler deals each worker a contiguous slice (the first ``n // workers``
    items, then ``n // (workers − 1)`` of the rest, …) and idle workers steal from the tail of a busy
    one's slice, so a long test collected mid-list would start late and the suite would wait on it
    alone. Long tests (a cost) go longest first to the least-loaded slice with room, at its head; the
    others (None) fill the slices in their own order."""
    sizes, left = [], len(costs)
    for k in range(workers, 0, -1):
        sizes.append(left // k)
        left -= sizes[-1]
    slices: list[list[int]] = [[] for _ in sizes]
    load = [0.0] * workers
    for i in sorted((i for i, c in enumerate(costs) if c is not None), key=lambda i: -float(costs[i] or 0)):
        w = min((w for w in range(workers) if len(slices[w]) < sizes[w]), key=lambda w: load[w])
        slices[w].append(i)
        load[w] += float(costs[i] or 0)
    light = iter(i for i, c in enumerate(costs) if c is None)
    for w in range(workers):
        slices[w].extend(next(light) for _ in range(sizes[w] - len(slices[w])))
    return [i for part in slices for i in part]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the long tests (``@pytest.mark.heavy(seconds)``, measured alone on 2 cores)
    start first, spread over the workers (``slices_for_workers``). Only the order changes."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    marks = [item.get_closest_marker("heavy") for item in items]
    order = slices_for_workers([float(m.args[0]) if m else None for m in marks], workers)
    items[:] = [items[i] for i in order]


def requires_shared(*parts: str) -> pytest.MarkDecorator:
    path = SHARED_DATASETS.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"real dataset files not found at {path}")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


class KedroProject:
    """A copy of the project's configuration in a temporary folder, run through KedroSession."""

    def __init__(self, root: Path):
        self.root = root

    def write_conf(self, env: str, name: str, content: dict[str, Any]) -> None:
        folder = self.root / "conf" / env
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(yaml.safe_dump(content, sort_keys=False))

    def run(self, pipelines: list[str], env: str | None = None, params: dict | None = None, **run: Any) -> dict:
        from kedro.framework.session import KedroSession
        from kedro.framework.startup import bootstrap_project

        bootstrap_project(self.root)
        with KedroSession.create(project_path=self.root, env=env, runtime_params=params) as session:
            return session.run(pipeline_names=pipelines, **run)

    def catalog(self, env: str | None = None):
        from kedro.framework.session import KedroSession
        from kedro.framework.startup import bootstrap_project

        bootstrap_project(self.root)
        with KedroSession.create(project_path=self.root, env=env) as session:
            return session.load_context().catalog

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KedroProject:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(REPO / ".telemetry", root / ".telemetry")
    shutil.copytree(REPO / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()
    monkeypatch.chdir(root)
    project = KedroProject(root)
    project.write_conf("local", "globals.yml", {"synthetic_scene": dict(TINY_SCENE)})
    # an absolute store per project: MLflow caches engines by URI string within a process
    mlflow_conf = yaml.safe_load((REPO / "conf" / "base" / "mlflow.yml").read_text())
    mlflow_conf["server"]["mlflow_tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    project.write_conf("local", "mlflow.yml", mlflow_conf)
    # 60 training pixels: let 8 Dirichlet clients hold as few as 2 each
    project.write_conf("local", "parameters_partition.yml", {
        "modality_split": {"partition": {"min_samples_per_client": 2}},
        "horizontal": {"partition": {"min_samples_per_client": 2}},
    })
    return project


@pytest.fixture(autouse=True)
def isolate_mlflow(monkeypatch):
    """A session that fails mid-run can leave an MLflow run active in this process; end it. A Kedro
    session also leaves its experiment active (``mlflow.set_experiment`` sets a module global and
    ``MLFLOW_EXPERIMENT_ID``), which names an experiment the next test's fresh database lacks.
    Where MLflow is not installed (a GPU machine running tests/test_cuda.py alone) there is none to isolate."""
    try:
        import mlflow.tracking.fluent
    except ModuleNotFoundError:
        yield
        return

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):  # set during the test, when absent before
        os.environ.pop(name, None)


# the tiny federations of tests/federated/tiny.py, built once per test session (federated and FedDiff tests)
@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory) -> dict:
    from tests.federated.tiny import horizontal_federation

    return horizontal_federation(tmp_path_factory.mktemp("federation"))


@pytest.fixture(scope="session")
def tiny_split_federation(tmp_path_factory) -> dict:
    """FedDiff's layout: 2 sites × {HSI holder, LiDAR holder}, with (random) diffusion features."""
    from tests.federated.tiny import split_federation

    return split_federation(tmp_path_factory.mktemp("split"))
