"""Diffusion U-Net training throughput (samples/s): default and paper width, fp32 vs bf16 autocast.

Usage: .venv/bin/python bench/bench_unet.py [--steps 10] [--widths 32 128] [--bands 144]
Prints a table and writes bench/results/unet.json (median step time of the timed steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from fedrs.models.diffusion import LinearSchedule, diffusion_loss
from fedrs.models.unet import DiffusionUNet, UNetSpec


def measure(width: int, bands: int, batch: int, steps: int, precision: str) -> dict:
    torch.manual_seed(0)
    model = DiffusionUNet(UNetSpec(in_channels=bands, base_channels=width)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    schedule = LinearSchedule(500)
    x0 = torch.randn(batch, bands, 8, 8)
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
        with ctx:
            loss = diffusion_loss(model, schedule, x0, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 2:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"width": width, "bands": bands, "batch": batch, "precision": precision, "median_step_s": median,
            "samples_per_s": batch / median, "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--bands", type=int, default=144)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    rows = [measure(w, args.bands, args.batch, args.steps, p) for w in args.widths for p in ("fp32", "bf16")]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
              "rows": rows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "unet.json").write_text(json.dumps(result, indent=2))
    print(f"U-Net training, {args.bands} bands, 8×8, batch {args.batch} ({result['machine']}):")
    for r in rows:
        print(f"  C={r['width']:4d} {r['precision']:5s} {r['samples_per_s']:8.1f} samples/s "
              f"({r['median_step_s'] * 1000:.0f} ms/step, {r['parameters'] / 1e6:.1f} M parameters)")


if __name__ == "__main__":
    main()
