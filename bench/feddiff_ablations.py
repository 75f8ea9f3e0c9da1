"""FedDiff's classifier stage under one changed setting at a time, on the diffusion models and
features of the last full run of the same environment: per-round training loss and test OA, final
OA/AA/κ, bytes sent. The evidence behind FedDiff's defaults (docs/houston-dev.md).

    kedro run --env=houston2013 --pipelines=feddiff --to-nodes=feddiff.extract_features   # once
    .venv/bin/python bench/feddiff_ablations.py --env houston2013 [--only default,no_compression] [--seeds 42]

Each variant is ``kedro run --from-nodes=feddiff.train_classifier --to-nodes=feddiff.evaluate``
with ``--params``; results go to results/feddiff_ablations_<env>.json and its SUMMARY section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, save

ROOT = Path(__file__).resolve().parents[1]
FED = "feddiff.classifier.federated"
TRAIN = "feddiff.classifier.train"
# name → (what it tests, --params overrides); the empty override is the defaults as configured
VARIANTS = {
    "default": ("the defaults as configured", {}),
    "no_compression": ("no codec anywhere (uploads, exchange, downloads dense)",
                       {f"{FED}.compression": "null", f"{FED}.exchange_compression": "null",
                        f"{FED}.downlink_compression": "null"}),
    "dense_downloads": ("downloads dense, uploads and exchange compressed", {f"{FED}.downlink_compression": "null"}),
    "no_error_feedback": ("compressed, but what the codec drops is lost",
                          {f"{FED}.compression.error_feedback": "false",
                           f"{FED}.downlink_compression.error_feedback": "false"}),
    "weight_term_0": ("λ = 0: no conv-weight term", {f"{TRAIN}.weight_term": "0"}),
    "weight_term_loss": ("λ·Σ‖W‖² in the loss (through Adam)", {f"{TRAIN}.weight_term_mode": "loss"}),
    "weight_term_decoupled": ("λ·Σ‖W‖² as decoupled decay", {f"{TRAIN}.weight_term_mode": "decoupled"}),
    "adam_fresh": ("Adam state reset every round", {f"{TRAIN}.keep_optimizer_state": "false"}),
    "adam_kept": ("Adam state kept across rounds", {f"{TRAIN}.keep_optimizer_state": "true"}),
    "exchange_eval_bn": ("partner outputs with BatchNorm in eval mode", {f"{TRAIN}.exchange_bn": "eval"}),
    "exchange_train_bn": ("partner outputs with BatchNorm in train mode", {f"{TRAIN}.exchange_bn": "train"}),
    "group_norm": ("GroupNorm instead of BatchNorm in the classifier", {"feddiff.classifier.model.norm": "group"}),
    "centre_path": ("the centre pixel's own features added to cnn_m", {"feddiff.classifier.model.centre_path": "true"}),
    "no_diffusion": ("no diffusion features (FedFusion-like)", {"feddiff.classifier.model.use_diffusion": "false"}),
    "no_bilateral": ("no bilateral connection", {"feddiff.classifier.model.bilateral": "false"}),
    "present_classes": ("cross-entropy over the classes a client holds (its site's)",
                        {f"{TRAIN}.present_classes_only": "true"}),
    "logit_adjust": ("logits + log(client's class prior) while training (logit calibration, τ = 1)",
                     {f"{TRAIN}.logit_adjustment": "1.0"}),
    "fedprox": ("FedProx μ = 0.01 on the clients", {f"{TRAIN}.proximal_mu": "0.01"}),
    "calibration": ("last layer retrained on virtual features from the clients' class statistics (CCVR)",
                    {f"{FED}.calibration": "{}"}),
    "rounds_30x1": ("30 rounds × 1 epoch", {f"{FED}.num_rounds": "30", f"{TRAIN}.epochs": "1"}),
    "rounds_25": ("25 rounds of the default local epochs", {f"{FED}.num_rounds": "25"}),
    "rounds_10x5": ("10 rounds × 5 epochs", {f"{FED}.num_rounds": "10", f"{TRAIN}.epochs": "5"}),
    "batch_16": ("batches of 16 (4× the optimiser steps)", {f"{TRAIN}.batch_size": "16"}),
    "epochs_5": ("5 local epochs per round", {f"{TRAIN}.epochs": "5"}),
    "lr_3e-4": ("learning rate 3e-4", {f"{TRAIN}.lr": "0.0003"}),
    "lr_3e-3": ("learning rate 3e-3", {f"{TRAIN}.lr": "0.003"}),
}


def run_variant(env: str, name: str, overrides: dict[str, str], seed: int | None, base: dict[str, str]) -> dict:
    params = {**base, **overrides}
    if seed is not None:
        params["compute.seed"] = str(seed)  # stage 3 only: the stored features keep the seed they were drawn with
    cmd = [str(Path(sys.executable).parent / "kedro"), "run", f"--env={env}", "--pipelines=feddiff",
           "--from-nodes=feddiff.train_classifier", "--to-nodes=feddiff.evaluate"]
    if params:
        cmd.append("--params=" + ",".join(f"{k}={v}" for k, v in params.items()))
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "FLWR_TELEMETRY_ENABLED": "0",
                               "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    if done.returncode:
        return {"name": name, "error": done.stderr[-2000:]}
    scene = env if env != "base" else "synthetic"
    metrics = json.loads((ROOT / f"data/08_reporting/{scene}/feddiff/metrics.json").read_text())
    run = metrics["run"]
    return {"name": name, "seed": seed, "seconds": time.perf_counter() - started,
            "oa": metrics["oa"], "aa": metrics["aa"], "kappa": metrics["kappa"],
            "val_oa_final": metrics.get("validation", {}).get("oa"),
            "train_loss": [r.get("train_loss") for r in run["rounds"]],
            "val_oa": [r.get("val_oa") for r in run["rounds"]],
            "mb_sent": run["bytes_sent"] / 1e6, "mb_dense": run["bytes_dense"] / 1e6,
            "loss_growing_rounds": run["loss_growing_rounds"],
            **({"oa_before_calibration": run["oa_before_calibration"]} if "oa_before_calibration" in run else {})}


def _val(row: dict) -> str:
    return "–" if row.get("val_oa_final") is None else f"{row['val_oa_final']:.4f}"


def trend(values: list[float]) -> str:
    """First → lowest → last, the shape a reader needs of a per-round curve."""
    values = [v for v in values if v is not None]
    return f"{values[0]:.3g} → {min(values):.3g} → {values[-1]:.3g}" if values else "–"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="houston2013")
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the configured one)")
    parser.add_argument("--base", default="", help="key=value,… applied under every variant (another baseline)")
    parser.add_argument("--tag", default="", help="names this set of rows (e.g. the base it ran on)")
    args = parser.parse_args()
    base = dict(item.split("=", 1) for item in args.base.split(",") if item)
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    seeds = [int(s) for s in args.seeds.split(",") if s] or [None]
    out = RESULTS / f"feddiff_ablations_{args.env}.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for name in names:
        for seed in seeds:
            row = {**run_variant(args.env, name, VARIANTS[name][1], seed, base), "tag": args.tag, "base": base}
            rows = [r for r in rows if (r["name"], r.get("seed"), r.get("tag", "")) != (name, seed, args.tag)] + [row]
            if "error" in row:
                print(f"{name} (seed {seed}): FAILED\n{row['error']}", flush=True)
                continue
            before = (f" (before calibration {row['oa_before_calibration']:.4f})"
                      if "oa_before_calibration" in row else "")
            print(f"{name} (seed {seed}): OA {row['oa']:.4f}{before}, loss {trend(row['train_loss'])}, "
                  f"OA per round {trend(row['val_oa'])}, {row['seconds']:.0f} s", flush=True)
    markdown = [f"FedDiff's classifier stage on `{args.env}`, one setting changed per row (same DDPMs and "
                "features); a variant is chosen on its validation OA, the test scores are reported; train "
                "loss and validation OA per round as first → lowest → last.", "",
                "| base | variant | what | seed | validation OA | test OA | AA | κ | train loss per round "
                "| validation OA per round | MB sent (dense) |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            continue
        what = VARIANTS.get(row["name"], ("",))[0]
        markdown.append(f"| {row.get('tag') or 'configured'} | {row['name']} | {what} | {row.get('seed') or 'conf'} | "
                        f"{_val(row)} | {row['oa']:.4f} | {row['aa']:.4f} | {row['kappa']:.4f} | "
                        f"{trend(row['train_loss'])} | "
                        f"{trend(row['val_oa'])} | {row['mb_sent']:,.0f} ({row['mb_dense']:,.0f}) |")
    save(f"feddiff_ablations_{args.env}", {"env": args.env, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
