"""Folders in the catalog: a path an earlier pipeline must have written (or a place to write), and
the report's per-algorithm results that may not exist yet."""

import pytest
from kedro.io import DatasetError

from fedrs.datasets.paths import FolderPathDataset, ResultsDataset


def test_a_folder_is_its_path_and_a_missing_one_is_named(tmp_path):
    with pytest.raises(DatasetError, match="clients is missing"):
        FolderPathDataset(str(tmp_path / "clients")).load()
    assert FolderPathDataset(str(tmp_path / "checkpoint"), must_exist=False).load() == str(tmp_path / "checkpoint")
    (tmp_path / "clients").mkdir()
    assert FolderPathDataset(str(tmp_path / "clients")).load() == str((tmp_path / "clients").resolve())
    with pytest.raises(DatasetError, match="only names a folder"):
        FolderPathDataset(str(tmp_path)).save("x")


def test_results_are_whatever_the_algorithms_left(tmp_path):
    results = ResultsDataset(path=str(tmp_path), dataset="json.JSONDataset", filename_suffix="/metrics.json")
    assert results.load() == {}
    for name, oa in (("fedavg", 0.5), ("feddiff", 0.9)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(f'{{"oa": {oa}}}')
    loaded = {key.strip("/"): load()["oa"] for key, load in results.load().items()}
    assert loaded == {"fedavg": 0.5, "feddiff": 0.9}
