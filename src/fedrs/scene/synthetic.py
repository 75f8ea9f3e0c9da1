"""A seeded synthetic HSI + LiDAR scene on which both modalities are needed.

Design (see ../shared/spec/architecture.md, "The synthetic scene"):
- ten land-cover classes built from six surface materials and three height regimes, so that three
  class pairs share a material and differ only in height (grass / trees, asphalt road / asphalt
  roof, concrete pavement / concrete building) and every ground-level or roof-level group shares a
  height and differs only in material;
- reflectance spectra with the physical shapes of the materials (red edge of vegetation, rising
  soil, dark water, flat asphalt, bright concrete, red clay, metal), per-object variability, a
  spatially autocorrelated illumination field, mixing at object borders (sensor PSF) and sensor
  noise;
- a DSM = smooth terrain + object heights + noise, and a LiDAR intensity raster (reflectance at
  ~1 µm with speckle), so LiDAR alone separates height regimes and a few bright/dark materials;
- labels: every object pixel except object borders; a sparse, spatially spread training split of
  ``train_per_class`` pixels per class, the rest test.

The generator returns band-first arrays; ``fedrs.datasets.SyntheticRasterDataset`` writes them as
GeoTIFFs and every run reads them back through the same rasterio path as real data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from fedrs.config import from_mapping
from fedrs.datasets.raster import Raster

CLASS_NAMES = [
    "Grass",
    "Trees",
    "Bare soil",
    "Water",
    "Asphalt road",
    "Asphalt roof",
    "Concrete pavement",
    "Concrete building",
    "Clay-tile roof",
    "Metal roof",
]
# class index (1-based) -> surface material
CLASS_MATERIAL = {1: "grass", 2: "tree", 3: "soil", 4: "water", 5: "asphalt", 6: "asphalt",
                  7: "concrete", 8: "concrete", 9: "clay", 10: "metal"}
ROOF_CLASSES = (6, 8, 9, 10)
# building heights (m): overlapping ranges so height alone cannot name the roof
ROOF_HEIGHT = {6: (4.0, 12.0), 8: (6.0, 16.0), 9: (4.0, 9.0), 10: (5.0, 12.0)}

# UTM 32N around Trento, 1 m pixels: a real CRS so the georeferencing path is exercised.
_CRS_EPSG = 32632
_ORIGIN = (664000.0, 5104000.0)


@dataclass(frozen=True)
class SyntheticSceneConfig:
    seed: int = 42
    size: int = 160
    bands: int = 56
    wavelength_range: tuple[float, float] = (400.0, 1000.0)
    lidar_channels: int = 2  # 1 = DSM only; 2 = DSM + intensity
    train_per_class: int = 30
    # calibration knobs (docs/data.md, "The built-in synthetic scene")
    noise_std: float = 0.03
    illumination_amplitude: float = 0.15
    object_variability: float = 2.0
    psf_sigma: float = 0.7
    height_noise_std: float = 2.0
    intensity_speckle_shape: float = 1.5
    n_buildings: int = 64
    n_tree_clusters: int = 45
    n_plazas: int = 14
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, params: dict | None) -> SyntheticSceneConfig:
        cfg = from_mapping(cls, params, label="synthetic scene", tuples=("wavelength_range",), noun="settings")
        if cfg.size < 48:
            raise ValueError(f"synthetic scene: size {cfg.size} too small; expected at least 48 pixels")
        if cfg.lidar_channels not in (1, 2):
            raise ValueError(f"synthetic scene: lidar_channels {cfg.lidar_channels}; expected 1 or 2")
        return cfg

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _gauss(w: np.ndarray, mu: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((w - mu) / sd) ** 2)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def material_spectra(wavelengths: np.ndarray) -> dict[str, np.ndarray]:
    """Mean reflectance (0..1) of each material at the given wavelengths (nm)."""
    w = np.asarray(wavelengths, dtype=np.float64)
    ramp = (w - 400.0) / 600.0
    return {
        "grass": 0.035 + 0.07 * _gauss(w, 550, 35) - 0.02 * _gauss(w, 670, 20)
        + 0.44 * _sigmoid((w - 712) / 17),
        # canopy: the grass curve, a touch darker with its red edge 3 nm later; within-object
        # variability is larger than this difference, so only height tells the two apart
        "tree": 0.95 * (0.035 + 0.07 * _gauss(w, 552, 35) - 0.02 * _gauss(w, 672, 20)
                        + 0.44 * _sigmoid((w - 715) / 17)),
        "soil": 0.07 + 0.27 * ramp - 0.06 * ramp**2 - 0.02 * _gauss(w, 900, 60),
        "water": 0.012 + 0.06 * np.exp(-(w - 400.0) / 140.0),
        "asphalt": 0.065 + 0.035 * ramp,
        "concrete": 0.27 + 0.08 * ramp - 0.03 * _gauss(w, 430, 40),
        "clay": 0.07 + 0.30 * _sigmoid((w - 585) / 22) + 0.03 * ramp,
        "metal": 0.42 - 0.05 * ramp + 0.015 * np.sin(w / 40.0),
    }


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field_ - field_.mean()) / (field_.std() + 1e-12)


@dataclass
class _Layout:
    """The scene's class map, object ids and object heights (before terrain), drawn piece by piece
    from one generator: ground cover and water, roads, plazas and buildings, tree stands."""

    n: int
    rng: np.random.Generator
    cls: np.ndarray = field(init=False)
    objects: np.ndarray = field(init=False)
    height: np.ndarray = field(init=False)
    occupied: np.ndarray = field(init=False)
    next_id: int = 1

    def __post_init__(self) -> None:
        shape = (self.n, self.n)
        self.cls = np.zeros(shape, dtype=np.int16)
        self.objects = np.zeros(shape, dtype=np.int32)
        self.height = np.zeros(shape, dtype=np.float64)
        self.occupied = np.zeros(shape, dtype=bool)

    @property
    def scale(self) -> float:
        return self.n / 160.0

    def ground(self) -> None:
        """Grass and soil fields from a smooth random field; a pond or two from another."""
        n, cls = self.n, self.cls
        ground = _smooth_field(self.rng, (n, n), 9 * self.scale)
        cls[:] = np.where(ground > 0.35, 3, 1)
        water = _smooth_field(self.rng, (n, n), 12 * self.scale)
        cls[water > np.quantile(water, 0.94)] = 4
        labels_ground, count = ndimage.label(cls > 0)
        self.objects[:] = labels_ground
        self.next_id = count + 1
        # ground regions are split into objects by class so each carries its own variability
        for klass in (1, 3, 4):
            lab, cnt = ndimage.label(cls == klass)
            self.objects[lab > 0] = lab[lab > 0] + self.next_id
            self.next_id += cnt + 1

    def roads(self) -> None:
        """A grid of asphalt strips."""
        n = self.n
        for axis in (0, 1):
            for _ in range(2):
                pos = int(self.rng.integers(int(0.1 * n), int(0.9 * n)))
                width = int(self.rng.integers(3, 6))
                sl = (slice(pos, pos + width), slice(None)) if axis == 0 else (slice(None), slice(pos, pos + width))
                self.cls[sl] = 5
                self.objects[sl] = self.next_id
                self.occupied[sl] = True
                self.next_id += 1

    def place_rect(self, klass: int, lo: int, hi: int, obj_height: float, tries: int = 60) -> bool:
        """A rectangle of ``klass`` on free ground (a plaza, or a building with a tilted roof)."""
        n, rng = self.n, self.rng
        for _ in range(tries):
            h = int(rng.integers(lo, hi + 1))
            w = int(rng.integers(lo, hi + 1))
            r = int(rng.integers(1, n - h - 1))
            c = int(rng.integers(1, n - w - 1))
            window = (slice(r - 1, r + h + 1), slice(c - 1, c + w + 1))
            if self.occupied[window].any():
                continue
            sl = (slice(r, r + h), slice(c, c + w))
            self.cls[sl] = klass
            self.objects[sl] = self.next_id
            self.occupied[sl] = True
            if obj_height > 0:
                tilt = rng.normal(0, 0.08, size=2)  # gently tilted roof plane
                rr, cc = np.mgrid[0:h, 0:w]
                self.height[sl] = obj_height + tilt[0] * (rr - h / 2) + tilt[1] * (cc - w / 2)
            self.next_id += 1
            return True
        return False

    def trees(self, clusters: int) -> None:
        """Clusters of round crowns on free ground; the crowns of a cluster form one object."""
        n, rng, scale = self.n, self.rng, self.scale
        rr, cc = np.mgrid[0:n, 0:n]
        for _ in range(clusters):
            cr, cc0 = rng.integers(0, n, size=2)
            placed = False
            for _ in range(int(rng.integers(3, 7))):
                r0 = cr + rng.normal(0, 4 * scale)
                c0 = cc0 + rng.normal(0, 4 * scale)
                radius = rng.uniform(2.0, 4.0) * max(scale, 0.6)
                top = rng.uniform(6.0, 14.0)
                d = np.hypot(rr - r0, cc - c0)
                crown = (d <= radius) & ~self.occupied & (self.cls != 4)
                if not crown.any():
                    continue
                self.cls[crown] = 2
                self.objects[crown] = self.next_id
                self.height[crown] = np.maximum(self.height[crown],
                                                top * np.sqrt(np.clip(1 - (d[crown] / radius) ** 2, 0.05, 1)))
                placed = True
            self.next_id += int(placed)


def _layout(cfg: SyntheticSceneConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class map, object ids and object heights (before terrain)."""
    layout = _Layout(cfg.size, rng)
    layout.ground()
    layout.roads()
    size_lo, size_hi = max(4, int(6 * layout.scale)), max(6, int(14 * layout.scale))
    for _ in range(cfg.n_plazas):
        layout.place_rect(7, size_lo, size_hi, 0.0)
    for i in range(cfg.n_buildings):
        klass = ROOF_CLASSES[i % len(ROOF_CLASSES)]
        lo, hi = ROOF_HEIGHT[klass]
        layout.place_rect(klass, size_lo, size_hi, float(rng.uniform(lo, hi)))
    layout.trees(cfg.n_tree_clusters)
    return layout.cls, layout.objects, layout.height


def _spread_sample(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, k: int, block: int) -> np.ndarray:
    """Indices of ``k`` pixels drawn round-robin over spatial blocks, so the sample is spread out."""
    if k >= rows.size:
        return np.arange(rows.size)
    block_id = (rows // block) * 10_000 + (cols // block)
    order = rng.permutation(rows.size)
    _, first = np.unique(block_id[order], return_inverse=True)
    # rank of each pixel within its block (in random order) → take rank 0 of every block, then 1 ...
    sort = np.argsort(first, kind="stable")
    rank = np.empty(rows.size, dtype=np.int64)
    boundaries = np.r_[0, np.flatnonzero(np.diff(first[sort])) + 1, rows.size]
    for start, stop in zip(boundaries[:-1], boundaries[1:], strict=False):
        rank[sort[start:stop]] = np.arange(stop - start)
    key = rank * rows.size + np.arange(rows.size)
    return order[np.argsort(key)[:k]]


_SECONDARY = {"grass": "soil", "tree": "grass", "soil": "grass", "water": "soil",
              "asphalt": "concrete", "concrete": "asphalt", "clay": "concrete", "metal": "concrete"}


def _reflectance(cfg: SyntheticSceneConfig, rng: np.random.Generator, wavelengths: np.ndarray,
                 spectra: dict[str, np.ndarray], cls: np.ndarray, objects: np.ndarray,
                 obj_scale: np.ndarray) -> np.ndarray:
    """The HSI cube [bands, H, W]: per-object variability, PSF mixing, illumination and noise."""
    n, v = cfg.size, cfg.object_variability
    n_obj = len(obj_scale)
    obj_mix = np.clip(v * rng.beta(1.2, 6.0, n_obj), 0, 0.6)      # fraction of a secondary material
    obj_tilt = v * rng.normal(0.0, 0.04, n_obj)                   # spectral slope change
    ramp = (wavelengths - wavelengths.mean()) / np.ptp(wavelengths)
    cube = np.empty((n, n, cfg.bands), dtype=np.float64)
    for klass, material in CLASS_MATERIAL.items():
        mask = cls == klass
        if not mask.any():
            continue
        ids = objects[mask]
        base = spectra[material][None, :]
        other = spectra[_SECONDARY[material]][None, :]
        mix = obj_mix[ids][:, None] * (0.5 if material in ("water", "metal") else 1.0)
        spec = (1 - mix) * base + mix * other
        spec = spec * obj_scale[ids][:, None] * (1.0 + obj_tilt[ids][:, None] * ramp[None, :])
        # within-object, pixel-level variability (texture)
        spec = spec * (1.0 + v * 0.05 * rng.standard_normal((ids.size, 1)))
        cube[mask] = spec
    if cfg.psf_sigma > 0:
        cube = ndimage.gaussian_filter(cube, sigma=(cfg.psf_sigma, cfg.psf_sigma, 0), mode="reflect")
    illumination = 1.0 + cfg.illumination_amplitude * _smooth_field(rng, (n, n), 14 * n / 160)
    cube *= illumination[..., None]
    band_noise = cfg.noise_std * (1.0 + 1.5 * np.abs(ramp) ** 2)  # noisier at the sensor's edges
    cube += rng.standard_normal(cube.shape) * band_noise[None, None, :]
    return np.clip(cube, 0.0, None).astype(np.float32).transpose(2, 0, 1)


def _lidar(cfg: SyntheticSceneConfig, rng: np.random.Generator, spectra: dict[str, np.ndarray], cls: np.ndarray,
           objects: np.ndarray, obj_height: np.ndarray, obj_scale: np.ndarray) -> np.ndarray:
    """DSM (gentle terrain ±3 m: objects, not hills, dominate the height signal) and intensity."""
    n = cfg.size
    terrain = 200.0 + 1.0 * _smooth_field(rng, (n, n), 30 * n / 160) + 0.01 * np.arange(n)[None, :]
    dsm = terrain + obj_height - 0.4 * (cls == 4)
    dsm = dsm + cfg.height_noise_std * rng.standard_normal((n, n))
    layers = [dsm]
    if cfg.lidar_channels == 2:
        nir = np.zeros((n, n))
        for klass, material in CLASS_MATERIAL.items():
            nir[cls == klass] = spectra[material][-1]
        nir *= obj_scale[objects]
        speckle = rng.gamma(cfg.intensity_speckle_shape, 1.0 / cfg.intensity_speckle_shape, (n, n))
        layers.append(1000.0 * nir * speckle)
    return np.stack(layers).astype(np.float32)


def _labels(cfg: SyntheticSceneConfig, rng: np.random.Generator, cls: np.ndarray, objects: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Object interiors only (borders are mixed pixels, left unlabelled as in real GT); a spread
    training sample per class, the rest as test."""
    n = cfg.size
    border = np.zeros((n, n), dtype=bool)
    for axis in (0, 1):
        for shift in (1, -1):
            border |= np.roll(objects, shift, axis=axis) != objects
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    labelled = np.where(border, 0, cls).astype(np.uint8)
    train = np.zeros_like(labelled)
    block = max(8, n // 8)
    for klass in range(1, len(CLASS_NAMES) + 1):
        rows, cols = np.nonzero(labelled == klass)
        if rows.size == 0:
            raise RuntimeError(f"synthetic scene (seed {cfg.seed}) has no pixel of class {klass}; enlarge size")
        k = min(cfg.train_per_class, max(1, rows.size // 4))
        pick = _spread_sample(rng, rows, cols, k, block)
        train[rows[pick], cols[pick]] = klass
    return train, np.where(train > 0, 0, labelled).astype(np.uint8)


def generate_synthetic_scene(config: SyntheticSceneConfig | dict | None = None) -> dict[str, Raster]:
    """Build the scene; returns ``{"hsi", "lidar", "train_labels", "test_labels"}`` rasters."""
    cfg = config if isinstance(config, SyntheticSceneConfig) else SyntheticSceneConfig.from_dict(config)
    rng = np.random.default_rng(cfg.seed)
    wavelengths = np.linspace(*cfg.wavelength_range, cfg.bands)
    spectra = material_spectra(wavelengths)
    cls, objects, obj_height = _layout(cfg, rng)
    obj_scale = 1.0 + cfg.object_variability * rng.normal(0.0, 0.07, int(objects.max()) + 1)  # each object's brightness
    hsi = _reflectance(cfg, rng, wavelengths, spectra, cls, objects, obj_scale)
    lidar = _lidar(cfg, rng, spectra, cls, objects, obj_height, obj_scale)
    train, test = _labels(cfg, rng, cls, objects)

    from rasterio.crs import CRS

    crs = CRS.from_epsg(_CRS_EPSG).to_wkt()
    transform = (1.0, 0.0, _ORIGIN[0], 0.0, -1.0, _ORIGIN[1])
    meta = {"generator": "fedrs.scene.synthetic", "config_digest": cfg.digest()}
    hsi_meta = {**meta, "wavelengths": ",".join(f"{w:.2f}" for w in wavelengths),
                "class_names": "|".join(CLASS_NAMES)}
    return {
        "hsi": Raster(hsi, crs, transform, None, "synthetic:hsi", hsi_meta),
        "lidar": Raster(lidar, crs, transform, None, "synthetic:lidar",
                        {**meta, "channels": "dsm" if cfg.lidar_channels == 1 else "dsm,intensity"}),
        "train_labels": Raster(train, crs, transform, None, "synthetic:train_labels", dict(meta)),
        "test_labels": Raster(test, crs, transform, None, "synthetic:test_labels", dict(meta)),
    }
