"""The synthetic scene as raw GeoTIFF layers, generated on first use.

A layer entry points at one GeoTIFF of a folder holding all four (``hsi.tif``, ``lidar.tif``,
``train_labels.tif``, ``test_labels.tif``). When any is missing, or was made by another generator
configuration (a digest stored as a GeoTIFF tag), the whole scene is generated and written
atomically; the layer is then read back by ``RasterDataset`` exactly as a real GeoTIFF would be.
This keeps the raw layer a catalog entry that each environment replaces (``conf/trento`` points
the same names at .mat files) instead of a pipeline node that real-data runs would have to skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from fedrs.datasets.raster import Raster, RasterDataset

LAYERS = ("hsi", "lidar", "train_labels", "test_labels")


class SyntheticRasterDataset(AbstractDataset[Raster, Raster]):
    def __init__(self, filepath: str, layer: str, generator: dict | None = None, metadata: dict | None = None):
        if layer not in LAYERS:
            raise ValueError(f"SyntheticRasterDataset: layer {layer!r}; expected one of {LAYERS}")
        self._filepath = Path(filepath)
        self._layer = layer
        self._generator = dict(generator or {})
        self.metadata = metadata

    def _layer_path(self, layer: str) -> Path:
        return self._filepath.parent / f"{layer}.tif"

    def _up_to_date(self, digest: str) -> bool:
        import rasterio

        for layer in LAYERS:
            path = self._layer_path(layer)
            if not path.is_file():
                return False
            with rasterio.open(path) as src:
                if src.tags().get("config_digest") != digest:
                    return False
        return True

    def load(self) -> Raster:
        from fedrs.scene.synthetic import SyntheticSceneConfig, generate_synthetic_scene

        config = SyntheticSceneConfig.from_dict(self._generator)
        if not self._up_to_date(config.digest()):
            self._logger.info(
                "Generating the synthetic scene (digest %s) into %s", config.digest(), self._filepath.parent
            )
            for layer, raster in generate_synthetic_scene(config).items():
                RasterDataset(str(self._layer_path(layer))).save(raster)
        return RasterDataset(str(self._filepath), description=f"the synthetic {self._layer} layer").load()

    def save(self, data: Raster) -> None:
        raise NotImplementedError("SyntheticRasterDataset is generated from its configuration, not saved")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "layer": self._layer, "generator": self._generator}
