"""Folders as catalog entries: a folder whose value is its path, and a folder of per-algorithm results.

A folder as a catalog entry whose value is its path:

Federated clients load their own partition files; the training node only needs to tell them where
those live. This keeps that location in the catalog (like every other path) instead of parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.partitions import PartitionedDataset

from fedrs.errors import InputError


class FolderPathDataset(AbstractDataset[str, str]):
    def __init__(self, path: str, must_exist: bool = True, metadata: dict | None = None):
        self._path = Path(path)
        self._must_exist = must_exist
        self.metadata = metadata

    def load(self) -> str:
        if self._must_exist and not self._path.is_dir():
            raise InputError(f"Folder {self._path} is missing; expected it to be written by an earlier pipeline")
        return str(self._path.resolve())

    def save(self, data: str) -> None:
        raise NotImplementedError("FolderPathDataset only names a folder; other entries write into it")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class ResultsDataset(PartitionedDataset):
    """A PartitionedDataset that may be empty: the report reads whatever the algorithm pipelines left
    (``{}`` when none wrote this kind of file, e.g. no diffusion history without FedDiff)."""

    def load(self) -> dict[str, Any]:
        try:
            return super().load()
        except DatasetError as error:
            if "No partitions found" in str(error):
                return {}
            raise
