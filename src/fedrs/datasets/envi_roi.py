"""ENVI ROI text exports (the Houston 2013 official training and test samples) as label rasters.

Format rules (see ../shared/datasets/README.md): ``;`` lines are comments and hold the header
(``Number of ROIs``, ``File Dimension: <cols> x <rows>``, per ROI ``ROI name`` and ``ROI npts``);
data lines are ``ID X Y Lat Lon`` with X the 1-based column and Y the 1-based row. A new ROI starts
whenever ID returns to 1. In the test (VA) file all headers precede all data, so the class of a data
line is decided by counting ID resets, never by which header came last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset

from fedrs.datasets._files import require_file
from fedrs.datasets.raster import Raster
from fedrs.errors import InputError

_DIMENSION = re.compile(r";\s*File Dimension:\s*(\d+)\s*x\s*(\d+)", re.IGNORECASE)
_NUM_ROIS = re.compile(r";\s*Number of ROIs:\s*(\d+)", re.IGNORECASE)
_ROI_NAME = re.compile(r";\s*ROI name:\s*(.*?)\s*$", re.IGNORECASE)
_ROI_NPTS = re.compile(r";\s*ROI npts:\s*(\d+)", re.IGNORECASE)


@dataclass
class _RoiText:
    """What the header declares and the data blocks (one per ROI: 0-based (row, col) pixels)."""

    names: list[str] = field(default_factory=list)
    npts: list[int] = field(default_factory=list)
    declared_rois: int | None = None
    dims: tuple[int, int] | None = None  # rows, cols
    blocks: list[list[tuple[int, int]]] = field(default_factory=list)


def _read_header(line: str, roi: _RoiText) -> None:
    if m := _DIMENSION.match(line):
        roi.dims = (int(m.group(2)), int(m.group(1)))  # header says cols x rows
    elif m := _NUM_ROIS.match(line):
        roi.declared_rois = int(m.group(1))
    elif m := _ROI_NAME.match(line):
        roi.names.append(m.group(1))
    elif m := _ROI_NPTS.match(line):
        roi.npts.append(int(m.group(1)))


def _read_roi_text(text: str, source: str) -> _RoiText:
    roi = _RoiText()
    previous_id = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(";"):
            _read_header(line, roi)
            continue
        fields = line.split()
        try:
            point_id, col, row = int(fields[0]), int(fields[1]), int(fields[2])
        except (ValueError, IndexError) as exc:
            raise InputError(
                f"{source}, line {lineno}: {line[:60]!r} is not a data line; expected 'ID X Y Lat Lon'"
            ) from exc
        if point_id == 1:
            roi.blocks.append([])
        elif not roi.blocks:
            raise InputError(f"{source}, line {lineno}: the first data line has ID {point_id}; expected 1")
        elif point_id != previous_id + 1:
            raise InputError(
                f"{source}, line {lineno}: point ID {point_id} follows {previous_id}; "
                "expected consecutive IDs within an ROI, restarting at 1 for the next one"
            )
        previous_id = point_id
        roi.blocks[-1].append((row - 1, col - 1))
    return roi


def _check_counts(roi: _RoiText, source: str) -> None:
    if roi.declared_rois is not None and roi.declared_rois != len(roi.blocks):
        raise InputError(
            f"{source}: header declares {roi.declared_rois} ROIs but the data holds {len(roi.blocks)} "
            "(counted by ID resets to 1)"
        )
    if roi.npts and len(roi.npts) == len(roi.blocks):
        for index, (declared, block) in enumerate(zip(roi.npts, roi.blocks, strict=False), start=1):
            if declared != len(block):
                raise InputError(
                    f"{source}: ROI {index} ({roi.names[index - 1] if index <= len(roi.names) else '?'}) "
                    f"declares {declared} points but its data block holds {len(block)}"
                )


def _rasterise(blocks: list[list[tuple[int, int]]], dims: tuple[int, int], source: str) -> np.ndarray:
    rows, cols = dims
    labels = np.zeros(dims, dtype=np.uint8 if len(blocks) < 256 else np.uint16)
    for klass, block in enumerate(blocks, start=1):
        coords = np.asarray(block, dtype=np.int64).reshape(-1, 2)
        bad = (coords[:, 0] < 0) | (coords[:, 0] >= rows) | (coords[:, 1] < 0) | (coords[:, 1] >= cols)
        if bad.any():
            r, c = coords[bad][0] + 1
            raise InputError(
                f"{source}: ROI {klass} has pixel X={c}, Y={r} outside the {cols} x {rows} image"
            )
        taken = labels[coords[:, 0], coords[:, 1]]
        if taken.any():
            i = int(np.flatnonzero(taken)[0])
            raise InputError(
                f"{source}: pixel X={coords[i, 1] + 1}, Y={coords[i, 0] + 1} is in ROI {int(taken[i])} "
                f"and again in ROI {klass}; expected each pixel in one ROI"
            )
        labels[coords[:, 0], coords[:, 1]] = klass
    return labels


def parse_envi_roi(text: str, source: str = "<text>", shape: tuple[int, int] | None = None) -> Raster:
    """Parse ROI text into a label raster (0 = unlabelled, ROI i → class i, 1-based)."""
    roi = _read_roi_text(text, source)
    dims = (int(shape[0]), int(shape[1])) if shape is not None else roi.dims
    if dims is None:
        raise InputError(f"{source}: no '; File Dimension: <cols> x <rows>' header and no shape given")
    _check_counts(roi, source)
    labels = _rasterise(roi.blocks, dims, source)
    return Raster(data=labels, source=source, meta={"class_names": roi.names[: len(roi.blocks)]})


class EnviRoiDataset(AbstractDataset[Raster, Raster]):
    """An ENVI ROI text export as a label ``Raster`` (read only); class names in ``meta``."""

    def __init__(self, filepath: str, shape: list[int] | None = None, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self._shape = tuple(shape) if shape else None
        self.metadata = metadata

    def load(self) -> Raster:
        path = require_file(self._filepath, "an ENVI ROI text export ('; ROI name:' headers, 'ID X Y' lines)")
        text = path.read_text(encoding="latin-1")
        return parse_envi_roi(text, source=str(path), shape=self._shape)

    def save(self, data: Raster) -> None:
        raise NotImplementedError("EnviRoiDataset is read only: raw data is never rewritten")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "shape": self._shape}
