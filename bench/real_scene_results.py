"""Every algorithm on one environment's scene over several seeds, as a user runs them
(``kedro run --env=E --pipelines=ALGO --params seed=S``), collected into one table: test OA/AA/κ
and validation OA as mean ± standard deviation over seeds, traffic, wall time, and every algorithm
against a reference, paired by seed, with a 95% interval (``fedrs.stats``: "level with" when it
contains 0). The figures behind the real-data results (README, docs/houston-dev.md).

    .venv/bin/python bench/real_scene_results.py --env houston2013 --algorithms feddiff,fedavg,fedcmi --seeds 1,2,3,4,5

``--folds 0,1,2,3,4`` runs k-fold cross-validation by blob instead of one split per seed: each
fold of the training ROIs is the validation split once (``--params cv_fold=k``) and the row's
``fold`` says which; the table then gives the fold mean and spread, and pairs runs by (seed, fold).

``--nodes`` runs only the named nodes of the pipeline: FedDiff without its diffusion features
(``--params feddiff.classifier.model.use_diffusion=false``) needs neither stage 1 nor stage 2, so
``--nodes`` with the data nodes, ``feddiff.train_classifier`` and ``feddiff.evaluate`` skips them (the
classifier's artefact still carries the last run's U-Nets, which a model without diffusion features
never calls).

``--no-maps`` stops each run at its evaluation (FedDiff's full-scene map of a Houston-size scene
takes about half an hour on 2 cores). The seed drives partitions, sampling, noise and
initialisation and which blob fold of the training ROIs is the validation split; the test split
stays fixed. Settings are chosen on the validation OA; the test OA is reported, never chosen on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, save
from fedrs.stats import format_mean_sd, paired_interval

ROOT = Path(__file__).resolve().parents[1]


def run(env: str, algorithm: str, seed: int, maps: bool, scene: str, params: str = "", label: str = "",
        nodes: str = "") -> dict:
    cmd = [str(Path(sys.executable).parent / "kedro"), "run", f"--env={env}", f"--pipelines={algorithm}",
           f"--params=seed={seed}" + (f",{params}" if params else "")]
    if nodes:
        cmd.append(f"--nodes={nodes}")
    elif not maps:
        cmd.append(f"--to-nodes={algorithm}.evaluate")
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "FLWR_TELEMETRY_ENABLED": "0",
                               "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    if done.returncode:
        return {"algorithm": label or algorithm, "seed": seed, "error": done.stderr[-3000:]}
    metrics = json.loads((ROOT / f"data/08_reporting/{scene}/{algorithm}/metrics.json").read_text())
    run_ = metrics.get("run", {})
    last = (run_.get("rounds") or [{}])[-1]  # the last round's row: what the passes after it did
    return {"algorithm": label or algorithm, "params": params, "seed": seed,
            "oa": metrics["oa"], "aa": metrics["aa"], "kappa": metrics["kappa"],
            "val_oa_final": metrics.get("validation", {}).get("oa"),
            "val_pixels": metrics.get("validation", {}).get("num_samples"),
            "per_class": metrics.get("per_class"), "variants": metrics.get("variants"),
            "mb_sent": run_.get("bytes_sent", 0) / 1e6, "mb_dense": run_.get("bytes_dense", 0) / 1e6,
            "train_loss": [r.get("train_loss") for r in run_.get("rounds", [])],
            "val_oa": [r.get("val_oa") for r in run_.get("rounds", [])],
            "val_loss": [r.get("val_loss") for r in run_.get("rounds", [])],  # the global model's own
            "val_oa_before_statistics": next((r["val_oa_before_statistics"] for r in run_.get("rounds", [])
                                               if "val_oa_before_statistics" in r), None),
            "oa_before_calibration": run_.get("oa_before_calibration"),
            "loss_growing_rounds": run_.get("loss_growing_rounds"),
            "val_loss_growing_rounds": run_.get("val_loss_growing_rounds"), "lost_clients": run_.get("lost_clients"),
            "training_seconds": run_.get("wall_seconds"), "command_seconds": time.perf_counter() - started,
            # the probabilities: test cross-entropy and ECE (before temperature scaling too, where it ran), the
            # temperature and the final model's validation loss at every T of its grid
            "test_loss": metrics.get("loss"), "test_ece": metrics.get("ece"),
            **{k: metrics[k] for k in ("temperature", "loss_before_temperature", "ece_before_temperature")
               if k in metrics},
            **{k: last[k] for k in ("temperature_grid", "val_loss_by_temperature", "val_loss_before_temperature")
               if k in last}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="houston2013")
    parser.add_argument("--scene", default="", help="scene_name of the environment (default: the env's name)")
    parser.add_argument("--algorithms", required=True)
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--no-maps", action="store_true")
    parser.add_argument("--params", default="", help="extra kedro --params (k=v,...) for a variant of one algorithm")
    parser.add_argument("--label", default="", help="the row name of such a variant, e.g. 'feddiff, stage 1 dense'")
    parser.add_argument("--nodes", default="", help="run only these nodes (comma-separated kedro --nodes)")
    parser.add_argument("--reference", default="feddiff", help="the row every other algorithm is compared with")
    parser.add_argument("--folds", default="", help="k-fold cross-validation by blob: the cv_fold values to run")
    parser.add_argument("--name", default="", help="the results file: real_scene_<name> (default: the scene, "
                        "<scene>_cv with --folds)")
    args = parser.parse_args()
    scene = args.scene or args.env
    # a fold-0 run is the same run as a plain one of that seed: cross-validation keeps a file of its own
    name = f"real_scene_{args.name or scene}" + ("_cv" if args.folds and not args.name else "")
    out = RESULTS / f"{name}.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    folds = [int(f) for f in args.folds.split(",")] if args.folds else [None]
    for algorithm in args.algorithms.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for fold in folds:
                params = ",".join(p for p in (args.params, "" if fold is None else f"cv_fold={fold}") if p)
                row = run(args.env, algorithm, seed, not args.no_maps, scene, params, args.label, args.nodes)
                row["fold"] = fold
                rows = [r for r in rows if key(r) != key(row)] + [row]
                where = f"seed {seed}" + ("" if fold is None else f" fold {fold}")
                if "error" in row:
                    print(f"{row['algorithm']} {where}: FAILED\n{row['error']}", flush=True)
                else:
                    print(f"{row['algorithm']} {where}: OA {row['oa']:.4f} AA {row['aa']:.4f} κ {row['kappa']:.4f} "
                          f"({row['command_seconds']:.0f} s)", flush=True)
                save(name, {"env": args.env, "rows": rows}, summary(rows, scene, args.reference))


def key(row: dict) -> tuple:
    """What one run is: its algorithm (or variant label), seed and cross-validation fold."""
    return row["algorithm"], row["seed"], row.get("fold")


def unit(row: dict) -> str:
    """How the table names a run: its seed, and its fold under cross-validation."""
    return str(row["seed"]) if row.get("fold") is None else f"{row['seed']}/f{row['fold']}"


def summary(rows: list[dict], scene: str, reference: str = "feddiff", confidence: float = 0.95) -> list[str]:
    lines = [f"Scene `{scene}`; per algorithm mean ± standard deviation over its runs (seeds, or seed/fold "
             "under cross-validation by blob).", "",
             "| algorithm | runs | test OA | test AA | test κ | validation OA | MB sent (dense) | training s |",
             "|---|---|---|---|---|---|---|---|"]
    ok_rows = {a: [r for r in rows if r["algorithm"] == a and "error" not in r]
               for a in dict.fromkeys(r["algorithm"] for r in rows)}
    for algorithm, ok in ok_rows.items():
        if not ok:
            continue
        cells = [format_mean_sd([r[key] for r in ok]) for key in ("oa", "aa", "kappa")]
        val = [r["val_oa_final"] for r in ok if r.get("val_oa_final") is not None]
        cells.append(format_mean_sd(val) if val else "–")
        lines.append(f"| {algorithm} | {', '.join(unit(r) for r in ok)} | {' | '.join(cells)} | "
                     f"{ok[0]['mb_sent']:,.0f} ({ok[0]['mb_dense']:,.0f}) | "
                     f"{statistics.mean(r['training_seconds'] or 0 for r in ok):,.0f} |")
    if ok_rows.get(reference):
        folds = any(r.get("fold") is not None for r in rows)
        caveat = (" (cross-validation folds share training pixels, so these intervals are optimistic: "
                  "Nadeau & Bengio, 2003)" if folds else "")
        for metric, title in (("val_oa_final", "Validation OA (what a setting is chosen on)"), ("oa", "Test OA")):
            ref = {unit(r): r[metric] for r in ok_rows[reference] if r.get(metric) is not None}
            if not ref:  # older result files have no validation OA
                continue
            lines += ["", f"{title}, paired by run against {reference}{caveat}:", ""]
            for algorithm, ok in ok_rows.items():
                other = {unit(r): r[metric] for r in ok if r.get(metric) is not None}
                if algorithm != reference and set(ref) & set(other):
                    lines.append("- " + paired_interval(ref, other, confidence).describe(reference, algorithm,
                                                                             runs="runs" if folds else "seeds"))
    return lines


if __name__ == "__main__":
    main()
