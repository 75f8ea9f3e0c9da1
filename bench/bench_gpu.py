"""Local-update throughput of each model at Houston size on this machine's CPU and, where present, its
GPU in fp32 and in bf16 autocast: samples/s of one client's epochs through the algorithms' own
``client_update`` (the code a federated client runs), peak GPU memory, and the training loss (a bf16
run that stops learning shows there). The paper-scale DDPM (C = 128) is the workload a GPU is for.

Usage: .venv/bin/python bench/bench_gpu.py [--samples 2048] [--cpu-samples 256] [--epochs 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import peak_rss_mb, save
from fedrs.federated.algorithms import get_algorithm

BANDS, SIZE, CLASSES = 144, 8, 15  # Houston 2013: 144 bands, patches at the U-Net size, 15 classes


TIMESTEPS = [5, 50, 200]  # the default feature timesteps


def workloads() -> dict[str, tuple[str, dict, tuple[str, ...], bool]]:
    """name: (algorithm, spec, modalities, needs diffusion features)."""
    feature_channels = 2 * 32 * len(TIMESTEPS)  # C = 32, channel_mult [1, 2]: 2C channels per timestep
    return {
        "FedAvg fusion CNN": ("fedavg", {"bands": BANDS, "lidar_channels": 1, "num_classes": CLASSES},
                              ("hsi", "lidar"), False),
        "FedDiff classifier (both branches)": (
            "feddiff_centralized",
            {"hsi_channels": BANDS, "lidar_channels": 1, "hsi_feature_channels": feature_channels,
             "lidar_feature_channels": feature_channels, "num_classes": CLASSES, "timesteps": TIMESTEPS},
            ("hsi", "lidar"), True),
        "DDPM HSI, C = 32 (default)": ("ddpm_hsi", {"in_channels": BANDS, "base_channels": 32, "size": SIZE},
                                       ("hsi",), False),
        "DDPM HSI, C = 128 (paper)": ("ddpm_hsi", {"in_channels": BANDS, "base_channels": 128, "size": SIZE},
                                      ("hsi",), False),
    }


def client_data(n: int, spec: dict, modalities: tuple[str, ...], features: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data: dict = {"labels": rng.integers(0, CLASSES, n)}
    channels = {"hsi": BANDS, "lidar": 1}
    for m in modalities:
        data[m] = rng.standard_normal((n, channels[m], SIZE, SIZE)).astype(np.float32)
        if features:
            data[f"{m}_features"] = rng.standard_normal((n, spec[f"{m}_feature_channels"], 4, 4)).astype(np.float32)
    return data


def measure(name: str, device: str, precision: str, samples: int, epochs: int) -> dict:
    algorithm, spec, modalities, features = workloads()[name]
    alg = get_algorithm(algorithm)
    data = client_data(samples, spec, modalities, features)
    config = {"epochs": epochs, "batch_size": 64, "device": device, "precision": precision}
    torch.manual_seed(0)
    model = alg.build_model(spec)
    alg.client_update(model, client_data(128, spec, modalities, features, seed=1), modalities,
                      {**config, "epochs": 1}, seed=1)  # warm-up: kernels chosen, memory pools filled
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    _, metrics = alg.client_update(model, data, modalities, config, seed=0)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"workload": name, "device": device, "precision": precision, "samples": samples, "epochs": epochs,
            "seconds": seconds, "samples_per_s": samples * epochs / seconds,
            "train_loss": float(metrics["train_loss"]),
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2048, help="pixels of the client on the GPU")
    parser.add_argument("--cpu-samples", type=int, default=256, help="pixels of the client on the CPU")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated workload names (default: all)")
    args = parser.parse_args()
    names = [n for n in workloads() if not args.only or n in args.only.split(",")]
    paths = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if torch.cuda.is_available() else [])
    rows = []
    for name in names:
        for device, precision in paths:
            samples = args.samples if device == "cuda" else args.cpu_samples
            row = measure(name, device, precision, samples, args.epochs)
            rows.append(row)
            print(f"{name} {device} {precision}: {row['samples_per_s']:,.0f} samples/s, loss {row['train_loss']:.4f}"
                  + (f", GPU peak {row['gpu_peak_mb']:,.0f} MiB" if row["gpu_peak_mb"] is not None else ""),
                  flush=True)
    lines = ["One client's local update (`client_update`, batch 64) at Houston size (144 bands, 8×8 patches, "
             "15 classes), random inputs; one timed run after a warm-up update; fp32 on a GPU is true fp32 "
             "(TF32 off, `fedrs.compute`).", "",
             "| workload | device | precision | samples/s | GPU peak MiB | train loss |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['device']} | {r['precision']} | {r['samples_per_s']:,.0f} | "
              f"{'–' if r['gpu_peak_mb'] is None else format(r['gpu_peak_mb'], ',.0f')} | {r['train_loss']:.4f} |"
              for r in rows]
    lines += ["", f"Peak host memory {peak_rss_mb():,.0f} MiB."]
    save("gpu", {"rows": rows}, lines)


if __name__ == "__main__":
    main()
