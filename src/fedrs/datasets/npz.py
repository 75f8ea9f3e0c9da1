"""Bundles of NumPy arrays plus JSON metadata in one ``.npz`` file, written atomically.

kedro-datasets has no NumPy dataset. Scenes, patch sets and client partitions are dicts whose
array values become npz members and whose other values (names, CRS, parameters) go into a JSON
member, so a bundle is readable without fedrs and without pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset

from fedrs.datasets._files import atomic_path, require_file

_META = "__meta__"


class NpzDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    def __init__(self, filepath: str, compress: bool = False, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self._compress = compress
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        path = require_file(self._filepath, "an .npz bundle written by fedrs")
        with np.load(path, allow_pickle=False) as npz:
            bundle: dict[str, Any] = {k: npz[k] for k in npz.files if k != _META}
            if _META in npz.files:
                bundle.update(json.loads(str(npz[_META])))
        return bundle

    def save(self, bundle: dict[str, Any]) -> None:
        arrays = {k: np.asarray(v) for k, v in bundle.items() if isinstance(v, np.ndarray)}
        meta = {k: v for k, v in bundle.items() if not isinstance(v, np.ndarray)}
        arrays[_META] = np.asarray(json.dumps(meta))
        writer = np.savez_compressed if self._compress else np.savez
        with atomic_path(self._filepath, suffix=".npz") as tmp:
            with open(tmp, "wb") as handle:
                writer(handle, **arrays)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "compress": self._compress}
