"""kedro-viz (dev extra) renders the project's pipelines: `kedro viz build` writes the graph offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_kedro_viz_builds_every_pipeline_graph(kedro_project):
    kedro = Path(sys.executable).parent / "kedro"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([str(kedro), "viz", "build"], cwd=kedro_project.root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    api = kedro_project.path("build", "api", "pipelines")
    assert {"feddiff", "fedcmi", "baselines", "report", "__default__"} <= {p.name for p in api.iterdir()}
    graph = json.loads((api / "feddiff").read_text())
    tasks = {n["name"] for n in graph["nodes"] if n["type"] == "task"}
    assert {"train_diffusion", "extract_features", "train_classifier", "evaluate", "classification_map"} <= tasks
    modular = set(graph["modular_pipelines"])
    assert "feddiff" in modular
