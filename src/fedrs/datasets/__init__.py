"""Kedro dataset classes the catalog names (``fedrs.datasets.<Class>``)."""

from fedrs.datasets.envi_roi import EnviRoiDataset, parse_envi_roi
from fedrs.datasets.matlab import MatArrayDataset, read_mat_variable
from fedrs.datasets.npz import NpzDataset
from fedrs.datasets.raster import Raster, RasterDataset
from fedrs.datasets.synthetic import SyntheticRasterDataset

__all__ = [
    "EnviRoiDataset",
    "MatArrayDataset",
    "NpzDataset",
    "Raster",
    "RasterDataset",
    "SyntheticRasterDataset",
    "parse_envi_roi",
    "read_mat_variable",
]
