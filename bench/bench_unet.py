"""Diffusion U-Net training throughput (samples/s) at default and paper width, fp32 vs bf16 autocast,
with the frequency blocks as specified, as in the authors' code (real part only) and without them —
and the ceiling this CPU allows: training FLOPs per sample against the measured fp32 GEMM rate.

Usage: .venv/bin/python bench/bench_unet.py [--steps 5] [--widths 32 128] [--bands 144] [--bf16-steps 2]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from common import gemm_gflops, median_seconds, peak_rss_mb, save
from fedrs.compute import cpu_has_native_bf16
from fedrs.feddiff.diffusion import LinearSchedule, diffusion_loss
from fedrs.feddiff.unet import DiffusionUNet, UNetSpec

VARIANTS = {"frequency (complex)": {}, "frequency (real part, authors')": {"complex_fft": False},
            "no frequency block": {"frequency_block": False}}


def training_gflop_per_sample(model: nn.Module, bands: int) -> float:
    """Conv/linear multiply-adds of one forward pass ×2 (FLOPs) ×3 (forward, input and weight grads)."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d | nn.Conv1d):
            kernel = int(torch.tensor(module.kernel_size).prod()) * module.in_channels // module.groups
            total[0] += 2 * output.numel() * kernel
        elif isinstance(module, nn.Linear):
            total[0] += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.randn(1, bands, 8, 8), torch.tensor([3]))
    for h in handles:
        h.remove()
    return 3 * total[0] / 1e9


def measure(spec: UNetSpec, batch: int, steps: int, precision: str) -> dict:
    torch.manual_seed(0)
    model = DiffusionUNet(spec).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    schedule, x0, generator = LinearSchedule(500), torch.randn(batch, spec.in_channels, 8, 8), torch.Generator()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = diffusion_loss(model, schedule, x0, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = median_seconds(step, steps, warmup=2)
    return {"median_step_s": seconds, "samples_per_s": batch / seconds,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_gflop_per_sample": training_gflop_per_sample(model, spec.in_channels)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--bf16-steps", type=int, default=2, help="bf16 is very slow without native support")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--bands", type=int, default=144)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    peak = gemm_gflops()
    rows = []
    for width in args.widths:
        for variant, flags in VARIANTS.items():
            precisions = ["fp32", "bf16"] if not flags else ["fp32"]
            for precision in precisions:
                steps = args.steps if precision == "fp32" else args.bf16_steps
                row = measure(
                    UNetSpec(in_channels=args.bands, base_channels=width, **flags), args.batch, steps, precision
                )
                row |= {
                    "width": width,
                    "variant": variant,
                    "precision": precision,
                    "ceiling_samples_per_s": peak / row["train_gflop_per_sample"],
                }
                rows.append(row)
                print(f"C={width} {variant} {precision}: {row['samples_per_s']:.1f} samples/s", flush=True)
    markdown = [
        f"U-Net training, {args.bands} bands, 8×8, batch {args.batch}. Measured fp32 GEMM rate "
        f"{peak:.0f} GFLOP/s; native bf16: {cpu_has_native_bf16()}. Ceiling = GEMM rate ÷ training FLOPs per sample.",
        "",
        "| C | variant | precision | samples/s | ceiling samples/s | of ceiling | GFLOP/sample | params (M) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    markdown += [
        f"| {r['width']} | {r['variant']} | {r['precision']} | {r['samples_per_s']:.1f} | "
        f"{r['ceiling_samples_per_s']:.1f} | {r['samples_per_s'] / r['ceiling_samples_per_s']:.0%} | "
        f"{r['train_gflop_per_sample']:.2f} | {r['parameters'] / 1e6:.1f} |"
        for r in rows
    ]
    save(
        "unet",
        {
            "gemm_gflops": peak,
            "native_bf16": cpu_has_native_bf16(),
            "bands": args.bands,
            "batch": args.batch,
            "rows": rows,
            "peak_rss_mb": peak_rss_mb(),
        },
        markdown,
    )


if __name__ == "__main__":
    main()
