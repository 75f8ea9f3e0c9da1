"""What the reproducible mode (FEDRS_REPRODUCIBLE=1) changes and costs, and whether it holds across
CPU kinds: the same seeded training (``fedrs.kernel_probe.probe``: 20 U-Net steps at C = 32, 144
bands, batch 64; 100 fusion-CNN steps — the workload of every earlier run of this bench, so old
digests stay comparable) in a fresh process per mode, with the loss trajectory to 9 digits, a
digest of the final weights and the time. Each run is kept per CPU kind in
``bench/results/reproducible_digests.json``; the strict digests of every kind seen must be equal.

    .venv/bin/python bench/bench_reproducible.py [--steps 20] [--width 32] [--runs 2]
    .venv/bin/python bench/bench_reproducible.py --trace OUT.json [--steps 2]   # per-operation digests
    .venv/bin/python bench/bench_reproducible.py --compare A.json B.json        # the first operation that differs
    .venv/bin/python bench/bench_reproducible.py --strict-only --launcher "qemu-x86_64 -cpu Haswell" \
        --kind "qemu Haswell (Intel, AVX2)"                                      # another CPU kind, emulated

``--trace`` records every aten operation of the strict probe with a digest of its output; run it on
two machines (or under ``qemu-x86_64 -cpu <model>``, which presents another vendor, cache sizes and
no AVX-512) and ``--compare`` names the first operation whose result differs: a bisection of the
whole stack in one step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from common import RESULTS, save
from fedrs.reproducible import CAPS, STRICT_ENV

MODES = {"": "default", "isa": "isa caps (FEDRS_REPRODUCIBLE=isa)", "strict": "strict (FEDRS_REPRODUCIBLE=1)"}
PINS = (*CAPS, *STRICT_ENV, "FEDRS_THREADS")  # each mode sets its own
CHILD = ("import json, sys, fedrs.kernel_probe as r; out = r.probe(int(sys.argv[1]), int(sys.argv[2]), "
         "trace=len(sys.argv) > 3)\nif len(sys.argv) > 3: json.dump(out, open(sys.argv[3], 'w')); out.pop('trace')\n"
         "print(json.dumps(out))")
DIGESTS = RESULTS / "reproducible_digests.json"


def run(mode: str, steps: int, width: int, trace: str | None = None, launcher: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PINS}
    env["FEDRS_REPRODUCIBLE"] = mode
    argv = [*launcher.split(), sys.executable, "-c", CHILD, str(steps), str(width), *([trace] if trace else [])]
    done = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def record_kind(row: dict, steps: int, width: int, kind: str | None = None) -> dict:
    """Keep this machine's strict digest beside those of the other CPU kinds seen (``kind``: the
    name of an emulated CPU, whose /proc/cpuinfo is the host's)."""
    kinds = json.loads(DIGESTS.read_text()) if DIGESTS.is_file() else {}
    cpu = row["machine"]
    name = kind or f"{cpu['model']} ({cpu['vendor']}; {cpu['isa']})"
    kinds[f"{name} steps={steps} width={width}"] = {
        "digest": row["digest"], "last_unet_loss": row["unet_losses"][-1], "cnn_loss": row["cnn_loss"],
        "mode": row["mode"], "date": datetime.now(UTC).isoformat(timespec="seconds")}
    DIGESTS.write_text(json.dumps(kinds, indent=1, sort_keys=True) + "\n")
    return kinds


def compare(a_path: str, b_path: str) -> None:
    from fedrs.kernel_probe import first_difference

    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    index = first_difference(a["trace"], b["trace"])
    print(f"A: {a['machine']} digest {a['digest']}\nB: {b['machine']} digest {b['digest']}")
    if index is None:
        print(f"all {len(a['trace'])} operations give identical outputs")
        return
    print(f"first differing operation: #{index} of {len(a['trace'])}: {a['trace'][index][0]} "
          f"(A {a['trace'][index][1]}, B {b['trace'][index][1]}); the operations before it:")
    for i in range(max(0, index - 5), index):
        print(f"  #{i} {a['trace'][i][0]} {a['trace'][i][1]}")
    differing = [a["trace"][i][0] for i in range(index, min(len(a["trace"]), len(b["trace"])))
                 if a["trace"][i] != b["trace"][i]]
    print(f"{len(differing)} operations differ from there on")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--runs", type=int, default=2, help="processes per mode (checks repeatability)")
    parser.add_argument("--trace", help="write the strict probe's per-operation trace here and stop")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two traces: the first operation that differs")
    parser.add_argument("--launcher", default="", help="run the probe under this command (e.g. qemu-x86_64 -cpu X)")
    parser.add_argument("--kind", help="name of the CPU kind the launcher presents (recorded with the digest)")
    parser.add_argument("--strict-only", action="store_true", help="only record this kind's strict digest")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    if args.trace:
        row = run("strict", args.steps, args.width, trace=args.trace, launcher=args.launcher)
        print(f"strict digest {row['digest']} on {args.kind or row['machine']}; trace in {args.trace}")
        return
    if args.strict_only:
        row = run("strict", args.steps, args.width, launcher=args.launcher)
        record_kind(row, args.steps, args.width, args.kind)
        print(f"strict digest {row['digest']} on {args.kind or row['machine']} (recorded in {DIGESTS})")
        return
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
    kinds = record_kind(pinned, args.steps, args.width, args.kind)
    first_diff = next((i + 1 for i, (a, b) in enumerate(zip(default["unet_losses"], pinned["unet_losses"],
                                                             strict=True)) if a != b), None)
    cost = {name: {k: row[k] / default[k] for k in ("unet_samples_per_s", "cnn_steps_per_s")}
            for name, row in rows.items()}
    cpu = pinned["machine"]
    markdown = [f"CPU: {cpu['model']} ({cpu['vendor']}; {cpu['isa']}). The same seeded training in fresh processes "
                f"({args.steps} U-Net steps at C = {args.width}, 144 bands, batch 64; {5 * args.steps} fusion-CNN "
                "steps) in each mode. Equal digests on two machines mean bit-identical weights.", "",
                "| mode | CPU code path | oneDNN | NNPACK | portable kernels | digest | repeatable | U-Net samples/s | "
                "CNN steps/s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        markdown.append(f"| {name} | {row['mode']['cpu_capability']} | {row['mode']['mkldnn']} | "
                        f"{row['mode']['nnpack']} | {row['mode']['portable_kernels']} | `{row['digest']}` | "
                        f"{row['repeatable']} | {row['unet_samples_per_s']:.1f} | {row['cnn_steps_per_s']:.1f} |")
    markdown += ["", "Speed against the default: " + "; ".join(
                     f"{name}: U-Net ×{c['unet_samples_per_s']:.2f}, CNN ×{c['cnn_steps_per_s']:.2f}"
                     for name, c in cost.items() if name != "default")
                 + ". First U-Net step whose loss differs between default and strict: "
                 f"{first_diff} (default {default['unet_losses'][-1]:.9f}, reproducible "
                 f"{pinned['unet_losses'][-1]:.9f} after {args.steps} steps).", "",
                 "Strict digests of every CPU kind measured (`bench/results/reproducible_digests.json`):", "",
                 "| CPU kind | strict digest | last U-Net loss | last CNN loss |", "|---|---|---|---|"]
    markdown += [f"| {kind} | `{v['digest']}` | {v['last_unet_loss']:.10f} | {v['cnn_loss']:.10f} |"
                 for kind, v in sorted(kinds.items())]
    save("reproducible", {"steps": args.steps, "width": args.width, "rows": rows, "cost": cost,
                          "first_differing_step": first_diff}, markdown)


if __name__ == "__main__":
    main()
