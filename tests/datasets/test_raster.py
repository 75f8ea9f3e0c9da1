import numpy as np
import pytest
import rasterio
from kedro.io import DatasetError

from fedrs.datasets import Raster, RasterDataset
from fedrs.errors import InputError


def test_geotiff_round_trip_keeps_georeferencing(tmp_path, rng):
    from rasterio.crs import CRS

    crs = CRS.from_epsg(32615).to_wkt()
    transform = (2.5, 0.0, 270795.0, 0.0, -2.5, 3290640.0)
    raster = Raster(rng.random((3, 8, 9)).astype(np.float32), crs, transform, None, "x", {"wavelengths": "1,2,3"})
    ds = RasterDataset(str(tmp_path / "sub" / "hsi.tif"))
    ds.save(raster)
    back = ds.load()
    np.testing.assert_array_equal(back.data, raster.data)
    assert CRS.from_wkt(back.crs) == CRS.from_epsg(32615)
    assert back.transform == pytest.approx(transform)
    assert back.meta["wavelengths"] == "1,2,3"


def test_no_crs_is_fine(tmp_path):
    ds = RasterDataset(str(tmp_path / "labels.tif"))
    ds.save(Raster(np.arange(12, dtype=np.uint8).reshape(3, 4)))
    back = ds.load()
    assert back.crs is None and back.transform is None
    assert back.data.shape == (1, 3, 4)


def test_corrupt_raster_names_file(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(DatasetError, match=r"Cannot read raster .*broken.tif.*expected the CASI GeoTIFF"):
        RasterDataset(str(tmp_path / "broken.tif"), description="the CASI GeoTIFF").load()


def test_missing_raster_names_expected_layout(tmp_path):
    with pytest.raises(Exception, match=r"casi.tif is missing; expected the 144-band CASI GeoTIFF"):
        RasterDataset(str(tmp_path / "casi.tif"), description="the 144-band CASI GeoTIFF").load()


def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "out.tif"
    real_open = rasterio.open

    def failing_open(path, mode="r", **kwargs):
        handle = real_open(path, mode, **kwargs)
        if mode == "w":
            handle.close()
            raise RuntimeError("interrupted mid-write")
        return handle

    monkeypatch.setattr(rasterio, "open", failing_open)
    with pytest.raises(Exception, match="interrupted mid-write"):
        RasterDataset(str(target)).save(Raster(np.zeros((1, 4, 4), np.float32)))
    assert list(tmp_path.iterdir()) == []


def test_rejects_4d(tmp_path):
    with pytest.raises(InputError, match="expected 2-D"):
        Raster(np.zeros((1, 2, 3, 4)))
