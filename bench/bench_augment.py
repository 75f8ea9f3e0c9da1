"""What dihedral augmentation (``train.augment: dihedral``) costs a client's local update: samples/s
of one epoch with and without it, for the fusion CNN (FedAvg) and FedCMI at the Houston development
scene's sizes (about 620 training pixels of a client, 144 bands, 1 DSM band, 7×7 patches), and the
turn itself on each array shape a FedDiff client turns (patches, and the partner's 128×2×2 maps).

Usage: .venv/bin/python bench/bench_augment.py [--repeats 5] [--pixels 620]
Writes bench/results/augment.json and .md (median of the repeats; the two settings interleaved, each
going first in turn, so a load that comes and goes touches both alike). FedCMI is timed in a round
after its warm-up (infiltration on).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from common import machine, peak_rss_mb, save
from fedrs.federated.algorithms import get_algorithm
from fedrs.federated.local import dihedral

BANDS, CLASSES, PATCH = 144, 15, 7
SPECS = {"fedavg": {"bands": BANDS, "lidar_channels": 1, "num_classes": CLASSES},
         "fedcmi": {"bands": BANDS, "lidar_channels": 1, "num_classes": CLASSES}}


def epoch_seconds(algorithm: str, data: dict, augment: str, seed: int) -> float:
    alg = get_algorithm(algorithm)
    torch.manual_seed(seed)
    model = alg.build_model(SPECS[algorithm])
    start = time.perf_counter()
    # round 2: FedCMI's infiltration (off in its warm-up round) is part of the work augmentation is added to
    alg.client_update(model, data, ("hsi", "lidar"), {"epochs": 1, "batch_size": 64, "augment": augment}, seed=seed,
                      rnd=2)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pixels", type=int, default=620)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = {"hsi": rng.standard_normal((args.pixels, BANDS, PATCH, PATCH), dtype=np.float32),
            "lidar": rng.standard_normal((args.pixels, 1, PATCH, PATCH), dtype=np.float32),
            "labels": rng.integers(0, CLASSES, args.pixels)}

    rows, result = [], {"pixels": args.pixels, "patch": PATCH, "bands": BANDS, "repeats": args.repeats,
                        "threads": torch.get_num_threads(), "update": {}, "turn_us": {}}
    for algorithm in SPECS:
        times: dict[str, list[float]] = {"none": [], "dihedral": []}
        for augment in times:  # warm-up
            epoch_seconds(algorithm, data, augment, 0)
        for r in range(args.repeats):
            for augment in (("none", "dihedral") if r % 2 == 0 else ("dihedral", "none")):  # alternate who goes first
                times[augment].append(epoch_seconds(algorithm, data, augment, r + 1))
        med = {k: statistics.median(v) for k, v in times.items()}
        result["update"][algorithm] = {f"{k}_samples_per_s": args.pixels / v for k, v in med.items()}
        result["update"][algorithm]["dihedral_over_none"] = med["dihedral"] / med["none"]
        rate = {k: f"{args.pixels / v:.0f}" for k, v in med.items()}
        rows.append(f"| {algorithm} local epoch | {rate['none']} | {rate['dihedral']} "
                    f"| ×{med['dihedral'] / med['none']:.3f} |")

    generator = torch.Generator().manual_seed(0)
    turn_rows = []
    for shape in [(64, BANDS, PATCH, PATCH), (64, 1, PATCH, PATCH), (64, 128, 2, 2)]:
        x = torch.randn(shape)
        elements = torch.randint(0, 8, (shape[0],), generator=generator)
        dihedral(x, elements)
        reps = max(20, args.repeats * 20)
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(reps):
                dihedral(x, elements)
            samples.append((time.perf_counter() - start) / reps * 1e6)
        us = statistics.median(samples)
        result["turn_us"]["x".join(map(str, shape))] = us
        turn_rows.append(f"| turn a batch {tuple(shape)} | {us:.0f} µs |")
    result["peak_rss_mb"] = peak_rss_mb()

    markdown = [f"One client's local epoch over {args.pixels} pixels (batch 64, {BANDS}+1 bands, {PATCH}×{PATCH} "
                f"patches; {torch.get_num_threads()} threads), without and with `train.augment: dihedral`, "
                f"median of {args.repeats} interleaved repeats:", "",
                "| update | samples/s, none | samples/s, dihedral | time ratio |", "|---|---|---|---|", *rows, "",
                "| the turn alone (`dihedral`) | median per call |", "|---|---|", *turn_rows, "",
                f"Peak memory {result['peak_rss_mb']:.0f} MiB."]
    save("augment", result, markdown)
    print(machine())


if __name__ == "__main__":
    main()
