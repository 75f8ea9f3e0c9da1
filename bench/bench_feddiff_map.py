"""FedDiff's full-scene classification map at Houston 2013 size per pixel (144 bands, 1 DSM channel,
7×7 patches, U-Nets at C = 32, the default classifier): pixels/s of the whole map, the split
between the diffusion features and the classifier, and the fraction of this CPU's fp32 FLOP
ceiling the map reaches (FLOPs per pixel ÷ measured GEMM rate). Weights are random — speed does
not depend on them — so it needs no trained model.

Usage: .venv/bin/python bench/bench_feddiff_map.py [--size 96] [--bands 144] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from common import gemm_gflops, median_seconds, peak_rss_mb, save
from fedrs.evaluation import predict_scene
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec
from fedrs.federated.algorithms import get_algorithm
from fedrs.pipelines.feddiff.nodes import classifier_spec, diffusion_modalities, unet_spec

ROOT = Path(__file__).resolve().parents[1]


def feddiff_artifact(bands: int, lidar_channels: int, num_classes: int, patch: int) -> dict:
    params = yaml.safe_load((ROOT / "conf/base/parameters_feddiff.yml").read_text())["feddiff"]
    shapes = {"hsi": np.zeros((1, bands, patch, patch), np.float32),
              "lidar": np.zeros((1, lidar_channels, patch, patch), np.float32), "num_classes": num_classes}
    torch.manual_seed(0)
    unets = {}
    for modality in diffusion_modalities(params["diffusion"]):  # the configured default's U-Nets
        spec = unet_spec(shapes, modality, params["diffusion"], {"unet_size": 8})
        unets[modality] = {"spec": spec, "state": DiffusionUNet(UNetSpec.from_dict(spec)).state_dict()}
    features = {"timesteps": params["features"]["timesteps"], "seed": 0}
    spec = classifier_spec(shapes, unets, params["classifier"], features["timesteps"], features["seed"])
    model = get_algorithm("feddiff").build_model(spec)
    return {"algorithm": "feddiff", "spec": spec, "modalities": ["hsi", "lidar"], "state": model.state_dict(),
            "unets": unets}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=96, help="the scene is size × size pixels")
    parser.add_argument("--bands", type=int, default=144)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096, help="patches.inference_batch_size")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 (opt-in; native bf16 CPUs or CUDA)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scene = {"hsi": rng.normal(size=(args.bands, args.size, args.size)).astype(np.float32),
             "lidar": rng.normal(size=(1, args.size, args.size)).astype(np.float32)}
    normalisation = {m: {"offset": np.zeros(len(scene[m]), np.float32), "scale": np.ones(len(scene[m]), np.float32)}
                     for m in ("hsi", "lidar")}
    artifact = feddiff_artifact(args.bands, 1, 15, 7)
    algorithm = get_algorithm("feddiff")
    pixels = args.size * args.size
    config = {"precision": args.precision}

    # where the time goes: features (prepare) vs the classifier (predict), timed inside the map
    spent = {"features": 0.0, "classifier": 0.0}
    prepare, predict = algorithm.prepare, algorithm.predict

    def timed(name, fn):  # noqa: ANN001, ANN202
        def wrapped(*a, **k):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapped

    object.__setattr__(algorithm, "prepare", timed("features", prepare))
    object.__setattr__(algorithm, "predict", timed("classifier", predict))
    try:
        seconds = median_seconds(lambda: predict_scene(artifact, scene, normalisation, 7, args.batch, config),
                                 args.repeats, warmup=1)
    finally:
        object.__delattr__(algorithm, "prepare")
        object.__delattr__(algorithm, "predict")
    runs = args.repeats + 1
    split = {k: v / runs for k, v in spent.items()}

    batch = {"hsi": rng.normal(size=(64, args.bands, 7, 7)).astype(np.float32),
             "lidar": rng.normal(size=(64, 1, 7, 7)).astype(np.float32)}
    model = algorithm.build_model(artifact["spec"])
    model.load_state_dict(artifact["state"])
    with FlopCounterMode(display=False) as counter:
        prepared = algorithm.prepare(artifact, batch, {})
        algorithm.predict(model, prepared, {})
    gflop_per_pixel = counter.get_total_flops() / 64 / 1e9
    peak = gemm_gflops()
    rate = pixels / seconds
    ceiling = peak / gflop_per_pixel
    print(f"FedDiff map ({args.precision}): {rate:,.0f} pixels/s ({split['features'] / seconds:.0%} features, "
          f"{split['classifier'] / seconds:.0%} classifier); {gflop_per_pixel * 1e3:.0f} MFLOP/pixel; "
          f"GEMM {peak:.0f} GFLOP/s → ceiling {ceiling:,.0f} pixels/s ({rate / ceiling:.0%} reached); "
          f"Houston 2013 (664,845 pixels): {664_845 / rate / 60:.1f} min", flush=True)
    markdown = [
        f"FedDiff's classification map, {args.size}×{args.size} pixels of {args.bands} bands + 1 DSM channel, "
        f"7×7 patches, batches of {args.batch}, {args.precision}, random weights (speed does not depend on them).",
        "",
        "| pixels/s | features | classifier | MFLOP/pixel | GEMM GFLOP/s | ceiling pixels/s | of ceiling | "
        "Houston 2013 map (min) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {rate:,.0f} | {split['features'] / seconds:.0%} | {split['classifier'] / seconds:.0%} | "
        f"{gflop_per_pixel * 1e3:.0f} | {peak:.0f} | {ceiling:,.0f} | {rate / ceiling:.0%} | "
        f"{664_845 / rate / 60:.1f} |",
    ]
    save("feddiff_map", {"precision": args.precision, "pixels": pixels, "seconds": seconds, "pixels_per_s": rate,
                         "split_seconds": split,
                         "gflop_per_pixel": gflop_per_pixel, "gemm_gflops": peak, "ceiling_pixels_per_s": ceiling,
                         "peak_rss_mb": peak_rss_mb()}, markdown)


if __name__ == "__main__":
    main()
