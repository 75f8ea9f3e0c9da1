"""What the reproducible mode (FEDRS_REPRODUCIBLE=1) changes and costs: the same seeded training,
run in a fresh process with and without it — the loss trajectory to 9 digits, a digest of the
final weights (compare it across machines: equal digests, identical numbers), and the time.

    .venv/bin/python bench/bench_reproducible.py [--steps 20] [--width 32] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import save

MODES = {"": "default", "isa": "isa caps (FEDRS_REPRODUCIBLE=isa)", "strict": "strict (FEDRS_REPRODUCIBLE=1)"}
CHILD = r"""
import hashlib, json, sys, time
import torch
import fedrs.reproducible as rep
from fedrs.models.diffusion import LinearSchedule, diffusion_loss
from fedrs.models.unet import DiffusionUNet, UNetSpec
from fedrs.models.baselines import FusionCNN, FusionSpec
steps, width = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
out = {"mode": rep.describe()}
unet = DiffusionUNet(UNetSpec(in_channels=144, base_channels=width))
opt = torch.optim.Adam(unet.parameters(), 1e-3)
g = torch.Generator().manual_seed(1)
x0 = torch.rand(64, 144, 8, 8, generator=g) * 2 - 1
schedule, losses = LinearSchedule(500), []
t0 = time.perf_counter()
for _ in range(steps):
    loss = diffusion_loss(unet, schedule, x0, g)
    opt.zero_grad(); loss.backward(); opt.step(); losses.append(float(loss))
out["unet_seconds"] = time.perf_counter() - t0
out["unet_losses"] = losses
cnn = FusionCNN(FusionSpec(bands=144, lidar_channels=1, num_classes=15))
opt = torch.optim.Adam(cnn.parameters(), 1e-3)
h, l = torch.randn(256, 144, 7, 7, generator=g), torch.randn(256, 1, 7, 7, generator=g)
y = torch.randint(0, 15, (256,), generator=g)
t0 = time.perf_counter()
for i in range(steps * 5):
    s = slice((i * 32) % 256, (i * 32) % 256 + 32)
    loss = torch.nn.functional.cross_entropy(cnn(hsi=h[s], lidar=l[s]), y[s])
    opt.zero_grad(); loss.backward(); opt.step()
out["cnn_seconds"] = time.perf_counter() - t0
out["cnn_loss"] = float(loss)
h = hashlib.sha256()
for model in (unet, cnn):
    for v in model.state_dict().values():
        h.update(v.detach().numpy().tobytes())
out["digest"] = h.hexdigest()[:16]
print(json.dumps(out))
"""


def run(mode: str, steps: int, width: int) -> dict:
    env = {**os.environ, "FEDRS_REPRODUCIBLE": mode}
    for key in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(width)], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--runs", type=int, default=2, help="processes per mode (checks repeatability)")
    args = parser.parse_args()
    rows = {}
    for mode in ("", "isa", "strict"):
        runs = [run(mode, args.steps, args.width) for _ in range(args.runs)]
        name = MODES[mode]
        rows[name] = {**runs[0], "repeatable": len({r["digest"] for r in runs}) == 1,
                      "unet_samples_per_s": 64 * args.steps / min(r["unet_seconds"] for r in runs),
                      "cnn_steps_per_s": 5 * args.steps / min(r["cnn_seconds"] for r in runs)}
        print(f"{name}: {rows[name]['mode']}, digest {rows[name]['digest']}, "
              f"U-Net {rows[name]['unet_samples_per_s']:.1f} samples/s, CNN {rows[name]['cnn_steps_per_s']:.1f} "
              f"steps/s, last U-Net loss {rows[name]['unet_losses'][-1]:.9f}", flush=True)
    default, pinned = rows["default"], rows["strict (FEDRS_REPRODUCIBLE=1)"]
    first_diff = next((i + 1 for i, (a, b) in enumerate(zip(default["unet_losses"], pinned["unet_losses"],
                                                             strict=True)) if a != b), None)
    cost = {name: {k: row[k] / default[k] for k in ("unet_samples_per_s", "cnn_steps_per_s")}
            for name, row in rows.items()}
    markdown = [f"The same seeded training in fresh processes ({args.steps} U-Net steps at C = {args.width}, "
                f"144 bands, batch 64; {5 * args.steps} fusion-CNN steps) in each mode. Equal digests on two "
                "machines mean bit-identical weights.", "",
                "| mode | CPU code path | oneDNN | digest | repeatable | U-Net samples/s | CNN steps/s |",
                "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        markdown.append(f"| {name} | {row['mode']['cpu_capability']} | {row['mode']['mkldnn']} | `{row['digest']}` | "
                        f"{row['repeatable']} | {row['unet_samples_per_s']:.1f} | {row['cnn_steps_per_s']:.1f} |")
    markdown += ["", "Speed against the default: " + "; ".join(
                     f"{name}: U-Net ×{c['unet_samples_per_s']:.2f}, CNN ×{c['cnn_steps_per_s']:.2f}"
                     for name, c in cost.items() if name != "default")
                 + ". First U-Net step whose loss differs between default and strict: "
                 f"{first_diff} (default {default['unet_losses'][-1]:.9f}, reproducible "
                 f"{pinned['unet_losses'][-1]:.9f} after {args.steps} steps)."]
    save("reproducible", {"steps": args.steps, "width": args.width, "rows": rows, "cost": cost,
                          "first_differing_step": first_diff}, markdown)


if __name__ == "__main__":
    main()
