"""The notebooks are stored without outputs and run top to bottom against a tiny project."""

import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

pytestmark = pytest.mark.integration
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_are_stored_without_outputs():
    assert {p.name for p in NOTEBOOKS} == {"results.ipynb", "scene_explorer.ipynb"}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has stored outputs"


def _execute(project, name):
    folder = project.path("notebooks")
    folder.mkdir(exist_ok=True)
    shutil.copy(REPO / "notebooks" / name, folder / name)
    notebook = nbformat.read(folder / name, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]


def _text(outputs):
    return "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)


@pytest.mark.heavy(35)
def test_notebooks_execute_top_to_bottom(kedro_project):
    kedro_project.write_conf(
        "local",
        "parameters_baselines.yml",
        {"baseline": {"model": {"width": 8, "dim": 16}, "train": {"epochs": 2, "batch_size": 8}}},
    )
    kedro_project.run(["centralized"])
    kedro_project.run(["report"])
    explorer = _execute(kedro_project, "scene_explorer.ipynb")
    assert sum("image/png" in o.get("data", {}) for o in explorer) == 3  # RGB + DSM, labels, spectra
    assert "10 classes" in _text(explorer)
    results = _execute(kedro_project, "results.ipynb")
    text = _text(results)
    assert "centralized" in text and "champion" in text
    assert sum("image/png" in o.get("data", {}) for o in results) == 4  # the report's four figures
