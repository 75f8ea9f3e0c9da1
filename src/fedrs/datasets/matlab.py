"""MATLAB ``.mat`` variables (v5 through SciPy, v7.3/HDF5 through h5py) as rasters.

kedro-datasets' ``matlab.MatlabDataset`` reads v5 only and returns the whole file; the real
distributions of Trento, MUUFL and Houston come in both versions and some nest the cube inside a
struct (GatorSense MUUFL: ``hsi.Lidar{1}.z``), hence this class.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset

from fedrs.datasets._files import require_file
from fedrs.datasets.raster import Raster
from fedrs.errors import InputError

_TOKEN = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?P<cells>(\{\d+\})*)$")


def parse_key(key: str) -> list[str | int]:
    """``"hsi.Lidar{1}.z"`` → ``["hsi", "Lidar", 0, "z"]``: MATLAB's 1-based cell index, 0-based."""
    steps: list[str | int] = []
    for token in key.split("."):
        match = _TOKEN.match(token)
        if not match:
            raise InputError(f"MATLAB key {key!r}: cannot parse {token!r}; expected name or name{{n}}")
        steps.append(match.group("name"))
        steps.extend(int(n) - 1 for n in re.findall(r"\{(\d+)\}", match.group("cells")))
    return steps


def _available(node: Any) -> str:
    if isinstance(node, dict):
        return ", ".join(k for k in node if not k.startswith("__")) or "none"
    if hasattr(node, "keys"):
        return ", ".join(node.keys()) or "none"
    return f"a value of type {type(node).__name__}"


def _walk_v5(tree: dict, steps: list[str | int], path: Path, key: str) -> np.ndarray:
    node: Any = tree
    for step in steps:
        if isinstance(step, int) and step == 0 and not isinstance(node, (list, tuple, np.ndarray)):
            continue  # loadmat(squeeze_me) turns a 1×1 cell into its element
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError) as exc:
            raise InputError(
                f"{path}: no {step!r} on the way to {key!r}; found {_available(node)}."
            ) from exc
    return np.asarray(node)


def _walk_v73(handle: Any, steps: list[str | int], path: Path, key: str) -> np.ndarray:
    import h5py

    node: Any = handle
    for step in steps:
        try:
            if isinstance(step, int):
                # A cell array is a dataset of object references, stored transposed like any array.
                refs = np.asarray(node).T.ravel(order="F")
                node = handle[refs[step]]
            else:
                node = node[step]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InputError(
                f"{path}: no {step!r} on the way to {key!r}; found {_available(node)}."
            ) from exc
    if not isinstance(node, h5py.Dataset):
        raise InputError(f"{path}: {key!r} is a struct, not an array; its fields are {_available(node)}.")
    # MATLAB writes column-major: h5py sees the axes reversed.
    return np.asarray(node[()]).T


def read_mat_variable(filepath: str | Path, key: str, expected: str = "") -> np.ndarray:
    """Read one (possibly nested) variable from a v5 or v7.3 MATLAB file."""
    import h5py
    import scipy.io

    path = require_file(filepath, expected or f"a MATLAB file holding variable {key!r}")
    steps = parse_key(key)
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as handle:
                return _walk_v73(handle, steps, path, key)
        except OSError as exc:
            raise InputError(f"Cannot read MATLAB v7.3 file {path}: {exc}") from exc
    try:
        tree = scipy.io.loadmat(path, simplify_cells=True)
    except Exception as exc:  # scipy raises several unrelated types for corrupt files
        raise InputError(
            f"Cannot read MATLAB file {path}: {exc}; expected a v5 or v7.3 .mat holding {key!r}."
        ) from exc
    return _walk_v5(tree, steps, path, key)


class MatArrayDataset(AbstractDataset[Raster, Raster]):
    """One array of a ``.mat`` file as a band-first ``Raster`` (read only).

    Args:
        filepath: the .mat file.
        key: variable name, dotted for struct fields, ``{n}`` for cells (``hsi.Lidar{1}.z``).
        layout: ``hwc`` (MATLAB's rows×cols×bands, the common case) or ``chw``.
        description: what the file should hold, quoted when it is missing.
    """

    def __init__(
        self,
        filepath: str,
        key: str,
        layout: str = "hwc",
        description: str = "",
        metadata: dict | None = None,
    ):
        if layout not in ("hwc", "chw"):
            raise InputError(f"MatArrayDataset({filepath}): layout {layout!r}; expected 'hwc' or 'chw'")
        self._filepath = Path(filepath)
        self._key = key
        self._layout = layout
        self._description = description or f"a MATLAB file with variable {key!r} ({layout})"
        self.metadata = metadata

    def load(self) -> Raster:
        array = read_mat_variable(self._filepath, self._key, self._description)
        if array.dtype == object or not np.issubdtype(array.dtype, np.number):
            raise InputError(
                f"{self._filepath}: {self._key!r} holds {array.dtype} data; expected a numeric array."
            )
        if array.ndim == 3 and self._layout == "hwc":
            array = np.moveaxis(array, -1, 0)
        return Raster(data=np.ascontiguousarray(array), source=f"{self._filepath}:{self._key}")

    def save(self, data: Raster) -> None:
        raise NotImplementedError("MatArrayDataset is read only: raw data is never rewritten")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "key": self._key, "layout": self._layout}
