import numpy as np
import pytest
import torch
from rasterio.crs import CRS
from scipy import ndimage

from fedrs.datasets import SyntheticRasterDataset
from fedrs.scene.synthetic import CLASS_NAMES, SyntheticSceneConfig, generate_synthetic_scene
from tests.conftest import TINY_SCENE


def test_same_seed_same_scene_other_seed_other_scene():
    a = generate_synthetic_scene(TINY_SCENE)
    b = generate_synthetic_scene(TINY_SCENE)
    c = generate_synthetic_scene({**TINY_SCENE, "seed": TINY_SCENE["seed"] + 1})
    for layer in a:
        np.testing.assert_array_equal(a[layer].data, b[layer].data)
    assert not np.array_equal(a["hsi"].data, c["hsi"].data)


def test_contract_shapes_and_georeferencing():
    scene = generate_synthetic_scene(TINY_SCENE)
    assert scene["hsi"].data.shape == (16, 64, 64) and scene["hsi"].data.dtype == np.float32
    assert scene["lidar"].data.shape == (2, 64, 64)
    train, test = scene["train_labels"].data[0], scene["test_labels"].data[0]
    assert not ((train > 0) & (test > 0)).any()
    assert set(np.unique(train)) == set(range(len(CLASS_NAMES) + 1))
    assert CRS.from_wkt(scene["hsi"].crs).to_epsg() == 32632
    assert scene["hsi"].transform[0] == 1.0 and scene["hsi"].transform[4] == -1.0
    wavelengths = [float(w) for w in scene["hsi"].meta["wavelengths"].split(",")]
    assert wavelengths[0] == pytest.approx(400.0) and wavelengths[-1] == pytest.approx(1000.0)


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match=r"unknown settings \['bandz'\]"):
        SyntheticSceneConfig.from_dict({"bandz": 3})


def test_dataset_writes_geotiffs_once_and_reads_them_back(tmp_path):
    folder = tmp_path / "raw"
    ds = SyntheticRasterDataset(str(folder / "hsi.tif"), layer="hsi", generator=TINY_SCENE)
    loaded = ds.load()
    assert sorted(p.name for p in folder.iterdir()) == ["hsi.tif", "lidar.tif", "test_labels.tif", "train_labels.tif"]
    np.testing.assert_allclose(loaded.data, generate_synthetic_scene(TINY_SCENE)["hsi"].data)
    assert loaded.source.endswith("hsi.tif")  # read through rasterio, not handed over in memory
    stamp = (folder / "lidar.tif").stat().st_mtime_ns
    SyntheticRasterDataset(str(folder / "lidar.tif"), layer="lidar", generator=TINY_SCENE).load()
    assert (folder / "lidar.tif").stat().st_mtime_ns == stamp  # unchanged config: not regenerated
    other = SyntheticRasterDataset(str(folder / "lidar.tif"), layer="lidar", generator={**TINY_SCENE, "seed": 99})
    assert not np.array_equal(other.load().data, loaded.data[:2])
    assert (folder / "lidar.tif").stat().st_mtime_ns != stamp


def _simple_classifier_oa(features: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Multinomial logistic regression on per-pixel features (3×3 means + centre), seeded."""
    x = features.reshape(features.shape[0], -1).T
    tr, te = train.ravel() > 0, test.ravel() > 0
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    x = (x - mu) / sd
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], len(CLASS_NAMES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    xt = torch.tensor(x[tr], dtype=torch.float32)
    yt = torch.tensor(train.ravel()[tr] - 1, dtype=torch.long)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    pred = model(torch.tensor(x[te], dtype=torch.float32)).argmax(1).numpy()
    return float(np.mean(pred == test.ravel()[te] - 1))


def test_default_scene_needs_both_modalities():
    """The calibration claim of docs/data.md: fusion clearly beats each single modality."""
    scene = generate_synthetic_scene(SyntheticSceneConfig())
    train, test = scene["train_labels"].data[0], scene["test_labels"].data[0]

    def features(cube):
        return np.concatenate([cube, ndimage.uniform_filter(cube, size=(1, 3, 3), mode="reflect")])

    hsi, lidar = features(scene["hsi"].data), features(scene["lidar"].data)
    oa_hsi = _simple_classifier_oa(hsi, train, test)
    oa_lidar = _simple_classifier_oa(lidar, train, test)
    oa_both = _simple_classifier_oa(np.concatenate([hsi, lidar]), train, test)
    print(f"simple classifier OA: HSI {oa_hsi:.3f}, LiDAR {oa_lidar:.3f}, both {oa_both:.3f}")
    assert oa_both >= oa_hsi + 0.10
    assert oa_both >= oa_lidar + 0.20
    assert 0.80 <= oa_both <= 0.97  # hard enough to separate methods, easy enough to learn
