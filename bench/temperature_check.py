"""What temperature scaling buys, judged out of sample: runs of ``real_scene_results.py`` with
``federated.temperature`` set over whole-ROI cross-validation folds, read back (nothing is re-run).

T is fitted on each run's validation pixels, so its own validation cross-entropy at T is in-sample.
The out-of-sample figure: fold k's final model scored on its validation pixels at T₋ₖ, the geometric
mean of the temperatures the seed's other folds fitted — read off the curve each history keeps (the
validation cross-entropy at every T of the grid, linear in log T between its points) — minus its
cross-entropy at T = 1; the folds' mean per seed, paired over seeds (``fedrs.stats``). Beside it the
test cross-entropy and expected calibration error with and without T (reported, never chosen on).

    .venv/bin/python bench/temperature_check.py --name houston2013_temperature_check \\
        real_scene_houston2013_roi_cv_temperature_a real_scene_houston2013_roi_cv_temperature_b
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict

import numpy as np

from common import RESULTS, save
from fedrs.stats import format_mean_sd, paired_interval


def loss_at(row: dict, temperature: float) -> float:
    """The run's final validation cross-entropy at ``temperature`` (its logits as trained divided by it)."""
    grid = np.log(np.asarray(row["temperature_grid"], dtype=np.float64))
    curve = np.asarray(row["val_loss_by_temperature"], dtype=np.float64)
    return float(np.interp(math.log(temperature), grid, curve))


def held_out(rows: list[dict]) -> dict[int, dict[str, float]]:
    """Per seed, the folds' mean of: the loss at T = 1, at its own T (in-sample), at T₋ₖ (held out)."""
    by_seed: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        if "error" not in row and row.get("val_loss_by_temperature"):
            by_seed[int(row["seed"])].append(row)
    out = {}
    for seed, runs in sorted(by_seed.items()):
        if len(runs) < 2:
            continue
        per_fold = []
        for row in runs:
            others = [r["temperature"] for r in runs if r is not row]
            pooled = math.exp(statistics.mean(math.log(t) for t in others))
            per_fold.append({"at_1": loss_at(row, 1.0), "own": loss_at(row, row["temperature"]),
                             "held_out": loss_at(row, pooled), "temperature": row["temperature"]})
        out[seed] = {k: statistics.mean(f[k] for f in per_fold) for k in per_fold[0]}
        out[seed]["folds"] = len(per_fold)
    return out


def summary(rows: list[dict], confidence: float = 0.95) -> list[str]:
    seeds = held_out(rows)
    ok = [r for r in rows if "error" not in r and r.get("temperature") is not None]
    lines = ["Validation cross-entropy of the final model (per seed, the mean over its folds): at T = 1, at the T "
             "fitted on the same pixels (in-sample), and at T₋ₖ (the other folds' geometric mean: held out).", "",
             "| seed | folds | T (mean) | at T = 1 | at its own T | at T₋ₖ |", "|---|---|---|---|---|---|"]
    for seed, s in seeds.items():
        lines.append(f"| {seed} | {s['folds']:.0f} | {s['temperature']:.2f} | {s['at_1']:.3f} | {s['own']:.3f} | "
                     f"{s['held_out']:.3f} |")
    if len(seeds) >= 2:
        at_1 = {k: v["at_1"] for k, v in seeds.items()}
        for key, label in (("held_out", "at T₋ₖ (held out: what the rule reads)"), ("own", "at its own T (in-sample)")):
            cmp = paired_interval({k: v[key] for k, v in seeds.items()}, at_1, confidence)
            lines.append(f"- {label} − at T = 1: {cmp.mean:+.3f} nats ({confidence:.0%} interval {cmp.low:+.3f} … "
                         f"{cmp.high:+.3f}, {cmp.n} seeds)")
    if ok and all("loss_before_temperature" in r for r in ok):
        lines += ["", f"Test pixels (reported, not chosen on; {len(ok)} runs, mean ± sd):", "",
                  "| | cross-entropy | ECE (15 bins) |", "|---|---|---|",
                  f"| without T | {format_mean_sd([r['loss_before_temperature'] for r in ok])} | "
                  f"{format_mean_sd([r['ece_before_temperature'] for r in ok])} |",
                  f"| with T | {format_mean_sd([r['test_loss'] for r in ok])} | "
                  f"{format_mean_sd([r['test_ece'] for r in ok])} |",
                  "", f"Temperatures fitted: {format_mean_sd([r['temperature'] for r in ok], 2)} "
                  f"(range {min(r['temperature'] for r in ok):.2f} … {max(r['temperature'] for r in ok):.2f})."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="result files under bench/results (without .json)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--confidence", type=float, default=0.95)
    args = parser.parse_args()
    rows = [r for source in args.sources for r in json.loads((RESULTS / f"{source}.json").read_text())["rows"]]
    lines = summary(rows, args.confidence)
    save(args.name, {"sources": args.sources, "per_seed": {str(k): v for k, v in held_out(rows).items()}}, lines)


if __name__ == "__main__":
    main()
