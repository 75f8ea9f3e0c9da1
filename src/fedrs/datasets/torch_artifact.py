"""Trained models as ``{"algorithm", "spec", "modalities", "state"}`` dicts, saved with torch.save atomically.

The artefact names the algorithm and the spec its model is rebuilt from, so it can be loaded
without pickling classes (``weights_only`` loading works).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from kedro.io import AbstractDataset

from fedrs.datasets._files import atomic_path, require_file


class TorchArtifactDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    def __init__(self, filepath: str, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        path = require_file(self._filepath, "a model artefact written by a fedrs training pipeline")
        return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, data: dict[str, Any]) -> None:
        with atomic_path(self._filepath, suffix=".pt") as tmp:
            torch.save(data, tmp)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
