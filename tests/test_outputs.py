"""`python -m fedrs.outputs`: what a run produced and where, read from the project's own catalog."""

import sys

import pytest

from fedrs import outputs

pytestmark = pytest.mark.integration


def test_the_listing_names_what_the_data_pipeline_wrote(kedro_project, monkeypatch, capsys):
    assert outputs.list_outputs(kedro_project.root, ["data"]) == []  # nothing run yet
    kedro_project.run(["data"])
    found = dict(outputs.list_outputs(kedro_project.root, ["data"]))
    assert {"scene", "train_patches", "test_patches", "normalisation"} <= set(found)
    assert found["train_patches"] == kedro_project.path("data/04_feature/synthetic/train_patches.npz")
    monkeypatch.setattr(sys, "argv", ["fedrs.outputs", "--pipelines=data"])
    outputs.main()
    printed = capsys.readouterr().out
    assert "Produced by kedro run --pipelines=data:" in printed and "train_patches.npz" in printed and "kB" in printed
