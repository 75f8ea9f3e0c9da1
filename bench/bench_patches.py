"""Patch extraction on a Houston-size scene (349×1905, 144 bands): patches/s and peak memory.

Usage: .venv/bin/python bench/bench_patches.py [--repeats 3]
Prints a table and writes bench/results/patches.json and .md (median of the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from common import peak_rss_mb, save
from fedrs.patching import PatchExtractor, apply_normaliser, fit_normaliser, iter_scene_patches

ROWS, COLS, BANDS = 349, 1905, 144
LABELLED = 15029  # Houston 2013: 2,832 train + 12,197 test


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the Houston size per axis")
    args = parser.parse_args()
    height, width = max(16, round(ROWS * args.scale)), max(16, round(COLS * args.scale))
    labelled = min(LABELLED, height * width // 2)
    rng = np.random.default_rng(0)
    hsi = (rng.random((BANDS, height, width), dtype=np.float32) * 4000).astype(np.uint16)
    lidar = rng.random((1, height, width), dtype=np.float32) * 60
    flat = rng.choice(height * width, labelled, replace=False)
    rows, cols = (flat // width).astype(np.int32), (flat % width).astype(np.int32)
    train_mask = np.zeros((height, width), bool)
    train = labelled * 2832 // LABELLED  # Houston's train share
    train_mask[rows[:train], cols[:train]] = True

    timings: dict[str, list[float]] = {"normalise": [], "labelled_patches": [], "full_scene_iteration": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        norm = apply_normaliser(hsi, fit_normaliser(hsi, train_mask))
        norm_lidar = apply_normaliser(lidar, fit_normaliser(lidar, train_mask))
        timings["normalise"].append(time.perf_counter() - t)
        t = time.perf_counter()
        patches = PatchExtractor(norm, args.patch_size)(rows, cols)
        timings["labelled_patches"].append(time.perf_counter() - t)
        del patches
        t = time.perf_counter()
        n = 0
        for r, _, _h, _l in iter_scene_patches(norm, norm_lidar, args.patch_size, batch_size=4096):
            n += r.size
        assert n == height * width
        timings["full_scene_iteration"].append(time.perf_counter() - t)

    med = {k: statistics.median(v) for k, v in timings.items()}
    pixels = height * width
    result = {"scene": f"{height}x{width}x{BANDS}", "patch_size": args.patch_size, "normalise_s": med["normalise"],
              "labelled_patches": labelled, "labelled_patches_s": med["labelled_patches"],
              "labelled_patches_per_s": labelled / med["labelled_patches"], "full_scene_pixels": pixels,
              "full_scene_s": med["full_scene_iteration"],
              "full_scene_pixels_per_s": pixels / med["full_scene_iteration"], "peak_rss_mb": peak_rss_mb(),
              "rows": [{"step": "labelled", "patches_per_s": labelled / med["labelled_patches"]},
                       {"step": "full scene", "patches_per_s": pixels / med["full_scene_iteration"]}]}
    save(
        "patches",
        result,
        [
            f"Scene {result['scene']} (Houston 2013 size at --scale 1), patch {args.patch_size}, "
            f"median of {args.repeats}.",
            "",
            "| step | seconds | patches/s |",
            "|---|---|---|",
            f"| normalise (fit on train pixels, apply) | {result['normalise_s']:.2f} | |",
            f"| {labelled:,} labelled patches | {result['labelled_patches_s']:.2f} | "
            f"{result['labelled_patches_per_s']:,.0f} |",
            f"| all {pixels:,} pixels, batches of 4,096 | {result['full_scene_s']:.2f} | "
            f"{result['full_scene_pixels_per_s']:,.0f} |",
            "",
            f"Peak memory {result['peak_rss_mb']:,.0f} MiB.",
        ],
    )


if __name__ == "__main__":
    main()
