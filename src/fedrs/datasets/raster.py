"""Georeferenced rasters: the in-memory ``Raster`` every raw reader returns, and GeoTIFF I/O."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset

from fedrs.datasets._files import atomic_path, require_file
from fedrs.errors import InputError


@dataclass
class Raster:
    """A raster in band-first layout ``[channels, rows, cols]`` with optional georeferencing.

    ``crs`` is WKT text and ``transform`` the six GDAL affine coefficients (a, b, c, d, e, f) so
    that both survive JSON; ``source`` names the file it came from, for error messages.
    """

    data: np.ndarray
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    nodata: float | None = None
    source: str = "<memory>"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim == 2:
            self.data = self.data[None]
        if self.data.ndim != 3:
            raise InputError(
                f"{self.source}: raster has shape {self.data.shape}; expected 2-D rows×cols "
                "or 3-D channels×rows×cols"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])


class RasterDataset(AbstractDataset[Raster, Raster]):
    """Any GDAL-readable raster (GeoTIFF in practice) through rasterio, band-first.

    Saving writes a tiled GeoTIFF with the raster's CRS and transform, atomically. The
    kedro-datasets experimental GeoTIFF dataset was not used: it refuses rasters without a CRS
    (label rasters of .mat distributions have none), returns xarray where fedrs works in NumPy,
    and neither creates parent folders nor writes atomically.
    """

    def __init__(self, filepath: str, description: str = "a GeoTIFF raster", metadata: dict | None = None):
        self._filepath = Path(filepath)
        self._description = description
        self.metadata = metadata

    def load(self) -> Raster:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        path = require_file(self._filepath, self._description)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    data = src.read()
                    crs = src.crs.to_wkt() if src.crs else None
                    transform = tuple(src.transform)[:6] if not src.transform.is_identity else None
                    nodata = src.nodata
                    tags = src.tags()
        except RasterioIOError as exc:
            raise InputError(f"Cannot read raster {path}: {exc}; expected {self._description}.") from exc
        return Raster(data=data, crs=crs, transform=transform, nodata=nodata, source=str(path), meta=tags)

    def save(self, raster: Raster) -> None:
        import rasterio
        from affine import Affine

        data = np.ascontiguousarray(raster.data)
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": data.shape[1],
            "width": data.shape[2],
            "count": data.shape[0],
            "dtype": data.dtype.name,
            "compress": "deflate",
        }
        if raster.crs:
            profile["crs"] = rasterio.crs.CRS.from_wkt(raster.crs)
        if raster.transform:
            profile["transform"] = Affine(*raster.transform)
        if raster.nodata is not None:
            profile["nodata"] = raster.nodata
        with atomic_path(self._filepath, suffix=".tif") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(data)
                if raster.meta:
                    dst.update_tags(**{k: str(v) for k, v in raster.meta.items()})

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "description": self._description}
