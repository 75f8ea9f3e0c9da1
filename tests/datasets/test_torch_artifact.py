"""Model artefacts on disk: written atomically, read back with weights only (no pickled code runs),
a missing file named in the error."""

import pytest
import torch
from kedro.io import DatasetError

from fedrs.datasets.torch_artifact import TorchArtifactDataset


def test_an_artefact_round_trips_and_a_missing_one_is_named(tmp_path):
    dataset = TorchArtifactDataset(str(tmp_path / "m" / "model.pt"))
    with pytest.raises(DatasetError, match="model.pt"):
        dataset.load()
    dataset.save({"algorithm": "fedavg", "spec": {"dim": 8}, "state": {"w": torch.ones(2)}})
    loaded = dataset.load()
    assert dataset.exists() and loaded["spec"] == {"dim": 8} and torch.equal(loaded["state"]["w"], torch.ones(2))
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["model.pt"]


def test_an_artefact_carrying_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state": {}, "hook": print}, path)  # a pickled callable: weights_only refuses it
    with pytest.raises(Exception, match="[Ww]eights only"):
        TorchArtifactDataset(str(path)).load()
