"""Kedro dataset classes the catalog names (``fedrs.datasets.<Class>``)."""

from fedrs.datasets.envi_roi import EnviRoiDataset, parse_envi_roi
from fedrs.datasets.matlab import MatArrayDataset, read_mat_variable
from fedrs.datasets.npz import NpzDataset
from fedrs.datasets.paths import FolderPathDataset, ResultsDataset
from fedrs.datasets.raster import Raster, RasterDataset
from fedrs.datasets.synthetic import SyntheticRasterDataset
from fedrs.datasets.torch_artifact import TorchArtifactDataset

__all__ = [
    "EnviRoiDataset",
    "FolderPathDataset",
    "MatArrayDataset",
    "NpzDataset",
    "Raster",
    "RasterDataset",
    "ResultsDataset",
    "SyntheticRasterDataset",
    "TorchArtifactDataset",
    "parse_envi_roi",
    "read_mat_variable",
]
