"""Diffusion feature extraction throughput (patches/s): encoder + middle block at each feature
timestep, as stage 2 of FedDiff runs it (diffusion_feature_bundle), default and paper width.

Usage: .venv/bin/python bench/bench_features.py [--patches 2048] [--repeats 3] [--timesteps 5 50 200]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import median_seconds, peak_rss_mb, save
from fedrs.feddiff.ddpm import diffusion_feature_bundle
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--bands", type=int, nargs="+", default=[144, 1])
    parser.add_argument("--timesteps", type=int, nargs="+", default=[5, 50, 200])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for width in args.widths:
        for bands in args.bands:
            torch.manual_seed(0)
            spec = {"in_channels": bands, "base_channels": width, "steps": 500}
            unet = DiffusionUNet(UNetSpec.from_dict(spec))
            patches = rng.uniform(-1, 1, (args.patches, bands, 7, 7)).astype(np.float32)
            seconds = median_seconds(
                lambda unet=unet, patches=patches: diffusion_feature_bundle(unet, patches, args.timesteps, 0),
                args.repeats,
            )
            rows.append(
                {
                    "width": width,
                    "bands": bands,
                    "timesteps": len(args.timesteps),
                    "seconds": seconds,
                    "patches_per_s": args.patches / seconds,
                }
            )
            print(f"C={width} bands={bands}: {args.patches / seconds:,.0f} patches/s", flush=True)
    markdown = [
        f"{args.patches:,} patches of 7×7 (resized to 8×8), timesteps {args.timesteps}, batches of 512, "
        f"median of {args.repeats}.",
        "",
        "| C | bands | patches/s | seconds |",
        "|---|---|---|---|",
    ]
    markdown += [f"| {r['width']} | {r['bands']} | {r['patches_per_s']:,.0f} | {r['seconds']:.2f} |" for r in rows]
    save(
        "features",
        {"patches": args.patches, "timesteps": args.timesteps, "rows": rows, "peak_rss_mb": peak_rss_mb()},
        markdown,
    )


if __name__ == "__main__":
    main()
