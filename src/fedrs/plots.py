"""Figures (matplotlib, headless): scene overview and pixels per client per class."""

from __future__ import annotations

import textwrap
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


def add_class_legend(fig: Figure, cmap: ListedColormap, names: list[str], **kwargs: Any) -> None:
    """One coloured patch per class (class i is colour i + 1; 0 is unlabelled), up to six per row."""
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i + 1)) for i in range(len(names))]
    fig.legend(handles, names, ncol=min(len(names), 6), **kwargs)


def row_normalised(confusion: Any) -> np.ndarray:
    """Each true class's row as fractions (recall on the diagonal); empty rows stay zero."""
    cm = np.asarray(confusion, dtype=np.float64)
    return cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)


def cumulative_mb_sent(rounds: list[dict[str, Any]]) -> np.ndarray:
    """MB sent in both directions up to and including each round."""
    return np.cumsum([r.get("bytes_down", 0) + r.get("bytes_up", 0) for r in rounds]) / 1e6


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
    for ax, key in zip(axes[2:], ("train_labels", "test_labels"), strict=False):
        ax.imshow(scene[key], cmap=cmap, vmin=0, vmax=len(names), interpolation="nearest")
        ax.set_title(f"{key.replace('_', ' ')} ({int((scene[key] > 0).sum())} px)")
    add_class_legend(fig, cmap, names, loc="lower center", bbox_to_anchor=(0.5, -0.12))
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"Scene: {scene.get('name', '')}")
    return fig


def split_figure(split: dict[str, Any], class_names: list[str], scene_name: str = "") -> Figure:
    """The training, validation (blob fold ``cv_fold`` of the training ROIs) and test pixels."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), constrained_layout=True)
    cmap = class_colours(len(class_names))
    for ax, name in zip(axes, ("train", "validation", "test"), strict=True):
        labels = split[f"{name}_labels"]
        ax.imshow(labels, cmap=cmap, vmin=0, vmax=len(class_names), interpolation="nearest")
        ax.set_title(f"{name} ({int((labels > 0).sum())} px)")
        ax.set_axis_off()
    add_class_legend(fig, cmap, class_names, loc="lower center", bbox_to_anchor=(0.5, -0.12))
    fig.suptitle(f"{scene_name}: validation = blob fold {int(split['cv_fold'])} of the training ROIs "
                 f"(validation_fraction {float(split['validation_fraction']):g}, seed {int(split['seed'])})")
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


def confusion_figure(report: dict[str, Any], class_names: list[str]) -> Figure:
    cm = np.asarray(report["confusion"], dtype=np.float64)
    norm = row_normalised(cm)
    size = max(5, 0.55 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), constrained_layout=True)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, shrink=0.8, label="row-normalised")
    ax.set_title(
        f"{report.get('algorithm', '')}: OA {report['oa']:.4f}, AA {report['aa']:.4f}, κ {report['kappa']:.4f}"
    )
    return fig


def classification_map_figure(prediction: np.ndarray, scene: dict[str, Any], title: str) -> Figure:
    names = list(scene["class_names"])
    cmap = class_colours(len(names))
    truth = np.maximum(scene["train_labels"], scene["test_labels"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), constrained_layout=True)
    for ax, image, label in ((axes[0], prediction, f"{title}: prediction"), (axes[1], truth, "ground truth")):
        ax.imshow(image, cmap=cmap, vmin=0, vmax=len(names), interpolation="nearest")
        ax.set_title(label)
        ax.set_axis_off()
    add_class_legend(fig, cmap, names, loc="lower center", bbox_to_anchor=(0.5, -0.1))
    return fig


def curves_figure(history: dict[str, Any]) -> Figure:
    rounds = history.get("rounds") or []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    name = history.get("algorithm", "")
    if not rounds:  # local training has per-client results instead of rounds
        clients = history.get("clients", [])
        axes[0].bar([str(c["client_id"]) for c in clients], [c["val_oa"] for c in clients])
        axes[0].set_title(f"{name}: validation OA per client")
        axes[0].set_xlabel("client")
        for ax in axes[1:]:
            ax.set_axis_off()
        return fig
    r = [row["round"] for row in rounds]
    axes[0].plot(r, [row.get("train_loss") or np.nan for row in rounds], marker="o",
                 label="training (clients' mean over local steps)")
    held_out = any(row.get("val_loss") is not None for row in rounds)
    if held_out:  # the global model's own loss: tells a creeping clients' mean from a diverging model
        axes[0].plot(r, [row.get("val_loss", np.nan) for row in rounds], marker=".", label="validation (global model)")
        axes[0].legend(fontsize=8)
    axes[0].set_title("loss (cross-entropy)" if held_out else "training loss")
    # a round not scored (validation_every, or no counts arrived) is a gap, not a zero
    oa = [row.get("val_oa", np.nan) for row in rounds]
    axes[1].plot(r, oa, marker="o", label="OA")
    axes[1].plot(r, [row.get("val_aa", np.nan) for row in rounds], marker=".", label="AA")
    axes[1].set_title("validation accuracy")
    axes[1].legend()
    sent = cumulative_mb_sent(rounds)
    axes[2].plot(sent, oa, marker="o")
    axes[2].set_xlabel("cumulative MB sent (both directions)")
    axes[2].set_title("OA against traffic")
    for ax in axes[:2]:
        ax.set_xlabel("round")
    fig.suptitle(name)
    return fig


def comparison_curves_figure(histories: dict[str, dict[str, Any]]) -> Figure:
    """Validation OA per round, and OA against cumulative bytes sent, one line per federated algorithm."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    for name, history in histories.items():
        rounds = [r for r in history.get("rounds") or [] if r.get("val_oa") is not None]
        if not rounds:
            continue
        oa = [r["val_oa"] for r in rounds]
        axes[0].plot([r["round"] for r in rounds], oa, marker=".", label=name)
        sent = cumulative_mb_sent(rounds)
        if sent[-1] > 0:
            axes[1].plot(sent, oa, marker=".", label=name)
    axes[0].set(xlabel="round", ylabel="validation OA", title="validation OA per round")
    axes[1].set(xlabel="cumulative MB sent (both directions, log)", ylabel="validation OA",
                title="validation OA against traffic")
    if axes[1].lines:
        axes[1].set_xscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def maps_grid_figure(predictions: dict[str, np.ndarray], scene: dict[str, Any], scores: dict[str, float]) -> Figure:
    """The ground truth, then every algorithm's classification map, on one colour scale."""
    names = list(scene["class_names"])
    cmap = class_colours(len(names))
    panels = [("ground truth", np.maximum(scene["train_labels"], scene["test_labels"]))]
    panels += [(f"{k} (OA {scores[k]:.3f})" if k in scores else k, v) for k, v in predictions.items()]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    height, width = panels[0][1].shape
    panel_w = 3.6
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(panel_w * cols, panel_w * rows * height / width + 0.6 * rows + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (title, image) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(image, cmap=cmap, vmin=0, vmax=len(names), interpolation="nearest")
        ax.set_title(title, fontsize=9)
    add_class_legend(fig, cmap, names, loc="outside lower center", fontsize=8)
    return fig


def confusion_grid_figure(reports: dict[str, dict[str, Any]], class_names: list[str]) -> Figure:
    """Row-normalised confusion matrices of every algorithm side by side."""
    cols = min(4, max(len(reports), 1))
    rows = max(1, -(-len(reports) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.ravel():
        ax.set_axis_off()
    ticks = range(len(class_names))
    for ax, (name, report) in zip(axes.ravel(), reports.items(), strict=False):
        ax.set_axis_on()
        ax.imshow(row_normalised(report["confusion"]), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{name}: OA {report['oa']:.3f}", fontsize=9)
        ax.set_xticks(ticks, [str(i + 1) for i in ticks], fontsize=6)
        ax.set_yticks(ticks, [str(i + 1) for i in ticks], fontsize=6)
    key = textwrap.fill(", ".join(f"{i + 1} {n}" for i, n in enumerate(class_names)), width=45 * cols)
    fig.supxlabel(f"predicted class\n{key}", fontsize=8)
    fig.supylabel("true class", fontsize=9)
    return fig


def modality_ablation_figure(rows: list[dict[str, Any]]) -> Figure:
    """Test OA with both modalities and with one, per algorithm (bars grouped by algorithm)."""
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    inputs = list(dict.fromkeys(r["inputs"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(algorithms) + 2), 4), constrained_layout=True)
    width = 0.8 / max(len(inputs), 1)
    for i, label in enumerate(inputs):
        values = [
            next((r["oa"] for r in rows if r["algorithm"] == a and r["inputs"] == label), np.nan) for a in algorithms
        ]
        ax.bar(np.arange(len(algorithms)) + i * width, values, width, label=label)
    ax.set_xticks(np.arange(len(algorithms)) + width * (len(inputs) - 1) / 2, algorithms, rotation=20, ha="right")
    ax.set(ylabel="test OA", ylim=(0, 1), title="single-modality ablations")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def privacy_curve_figure(sweeps: dict[str, dict[str, Any]]) -> Figure:
    """Test OA against the privacy budget ε, one line per algorithm's DP sweep, its run without DP
    as a dashed level of the same colour (``report.privacy_frame`` rows)."""
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for i, (name, sweep) in enumerate(sorted(sweeps.items())):
        colour = f"C{i}"
        points = sorted((r["epsilon"], r["oa"]) for r in sweep["rows"] if r.get("epsilon") is not None)
        if points:
            ax.plot(*zip(*points, strict=True), "o-", color=colour, label=f"{name}, DP")
        plain = next((r["oa"] for r in sweep["rows"] if r.get("sigma") is None), None)
        if plain is not None:
            ax.axhline(plain, color=colour, linestyle="--", linewidth=1, label=f"{name}, no DP")
    ax.set(xscale="log", xlabel="ε (δ as in each sweep; smaller is more private)", ylabel="test OA", ylim=(0, 1),
           title="differential privacy: accuracy against ε")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig
