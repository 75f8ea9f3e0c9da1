"""Figures (matplotlib, headless): scene overview and pixels per client per class."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def class_colours(num_classes: int) -> ListedColormap:
    """Black for unlabelled, then a qualitative colour per class."""
    base = plt.get_cmap("tab20" if num_classes > 10 else "tab10")
    colours = [(0, 0, 0, 1)] + [base(i % base.N) for i in range(num_classes)]
    return ListedColormap(colours)


def rgb_bands(wavelengths: list[float] | None, bands: int) -> list[int]:
    """Bands nearest to 640/550/460 nm when wavelengths are known, else spread over the cube."""
    if wavelengths:
        w = np.asarray(wavelengths)
        return [int(np.argmin(np.abs(w - target))) for target in (640.0, 550.0, 460.0)]
    return [int(bands * f) for f in (0.75, 0.5, 0.25)]


def stretch(image: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    lo, hi = np.percentile(image, [low, high])
    return np.clip((image - lo) / (hi - lo + 1e-12), 0.0, 1.0)


def scene_overview_figure(scene: dict[str, Any], bands: list[int] | None = None) -> Figure:
    hsi, lidar = scene["hsi"], scene["lidar"]
    names = list(scene["class_names"])
    picks = bands or rgb_bands(scene.get("wavelengths"), hsi.shape[0])
    rgb = np.stack([stretch(hsi[b]) for b in picks], axis=-1)
    fig, axes = plt.subplots(1, 4, figsize=(18, 5), constrained_layout=True)
    axes[0].imshow(rgb)
    axes[0].set_title(f"HSI composite (bands {picks})")
    im = axes[1].imshow(lidar[0], cmap="viridis")
    axes[1].set_title("LiDAR channel 0 (DSM)")
    fig.colorbar(im, ax=axes[1], shrink=0.7)
    cmap = class_colours(len(names))
    for ax, key in zip(axes[2:], ("train_labels", "test_labels")):
        ax.imshow(scene[key], cmap=cmap, vmin=0, vmax=len(names), interpolation="nearest")
        ax.set_title(f"{key.replace('_', ' ')} ({int((scene[key] > 0).sum())} px)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i + 1)) for i in range(len(names))]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), bbox_to_anchor=(0.5, -0.12))
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"Scene: {scene.get('name', '')}")
    return fig


def client_class_figure(manifest: dict[str, Any], class_names: list[str]) -> Figure:
    clients = manifest["clients"]
    counts = np.asarray([c["class_counts"] for c in clients])  # [clients, classes]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(clients) + 3), 4.5), constrained_layout=True)
    cmap = class_colours(len(class_names))
    bottom = np.zeros(len(clients))
    x = np.arange(len(clients))
    for k, name in enumerate(class_names):
        ax.bar(x, counts[:, k], bottom=bottom, color=cmap(k + 1), label=name)
        bottom += counts[:, k]
    ax.set_xticks(x, [f"{c['client_id']}\n{'+'.join(c['modalities'])}"
                      + (f"\nsite {c['site']}" if c.get("site") is not None else "") for c in clients],
                  fontsize=8)
    ax.set_ylabel("training pixels")
    ax.set_title(f"Pixels per client per class — {manifest.get('layout')}")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig
