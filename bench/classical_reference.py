"""The classical reference of the results tables: an RBF-SVM on each pixel's centre spectrum and its
P×P DSM window, with C and γ chosen on the validation split (grid below) and the test split scored
once, over seeds (each seed carves its own validation fold), with and without disjoint patches.

    .venv/bin/python bench/classical_reference.py --env houston2013 --seeds 1,2,3,4,5

It reads the patch sets the ``patches`` pipeline writes (run here per seed with the same
``kedro run --env E --pipelines=ingest,patches --params seed=S`` a user types), so it sees exactly
what the neural models see: with ``disjoint`` the training windows show the training mean where a
validation or test pixel lies. Pooled (not federated): the reference a federated method should
approach, as the centralized CNN is.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.svm import SVC

from common import save
from fedrs.datasets import NpzDataset
from fedrs.metrics import classification_report
from fedrs.stats import format_mean_sd

ROOT = Path(__file__).resolve().parents[1]
GRID = {"C": [1.0, 10.0, 100.0, 1000.0], "gamma_scale": [0.1, 1.0, 10.0]}  # γ in units of 1 / (features · var)


def features(patches: dict) -> np.ndarray:
    """Centre spectrum and the whole LiDAR window, one row per pixel."""
    half = int(patches["patch_size"]) // 2
    centre = patches["hsi"][:, :, half, half]
    return np.concatenate([centre, patches["lidar"].reshape(len(centre), -1)], axis=1).astype(np.float64)


def fit_and_score(scene_dir: Path) -> dict:
    sets = {name: NpzDataset(str(scene_dir / f"{name}_patches.npz")).load() for name in ("train", "validation", "test")}
    x = {name: features(s) for name, s in sets.items()}
    mean, std = x["train"].mean(axis=0), x["train"].std(axis=0) + 1e-9  # training statistics only
    x = {name: (v - mean) / std for name, v in x.items()}
    k = int(sets["train"]["num_classes"])
    best = None
    for c, scale in itertools.product(GRID["C"], GRID["gamma_scale"]):
        model = SVC(C=c, gamma=scale / x["train"].shape[1]).fit(x["train"], sets["train"]["labels"])
        val = classification_report(sets["validation"]["labels"], model.predict(x["validation"]), k)["oa"]
        if best is None or val > best[0]:
            best = (val, c, scale, model)
    val_oa, c, scale, model = best
    test = classification_report(sets["test"]["labels"], model.predict(x["test"]), k)
    return {"val_oa": val_oa, "C": c, "gamma_scale": scale, "oa": test["oa"], "aa": test["aa"], "kappa": test["kappa"],
            "train_pixels": int(len(x["train"])), "validation_pixels": int(len(x["validation"]))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="houston2013")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--disjoint", default="true,false", help="which patches.disjoint settings to run")
    parser.add_argument("--params", default="", help="extra kedro --params (k=v,...), e.g. patches.validation_by=rois")
    parser.add_argument("--tag", default="", help="names the results file of such a variant: ..._<tag>")
    args = parser.parse_args()
    kedro = str(Path(sys.executable).parent / "kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": os.environ.get(
        "MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")}
    scene = args.env if args.env != "base" else "synthetic"
    rows = []
    for disjoint in args.disjoint.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            started = time.perf_counter()
            params = ",".join(p for p in (f"seed={seed}", f"patches.disjoint={disjoint}", args.params) if p)
            subprocess.run([kedro, "run", f"--env={args.env}", "--pipelines=ingest,patches", f"--params={params}"],
                           cwd=ROOT, env=env, check=True, capture_output=True)
            row = {"disjoint": disjoint == "true", "seed": seed, **fit_and_score(ROOT / "data/04_feature" / scene),
                   "seconds": time.perf_counter() - started}
            rows.append(row)
            print(json.dumps(row), flush=True)
    markdown = [f"RBF-SVM on centre spectrum + DSM window, `{args.env}`"
                + (f" with `{args.params}`" if args.params else "") + "; C, γ chosen on validation OA; "
                "mean ± standard deviation over seeds.", "",
                "| disjoint patches | seeds | validation OA | test OA | test AA | test κ |",
                "|---|---|---|---|---|---|"]
    for disjoint in (True, False):
        ok = [r for r in rows if r["disjoint"] == disjoint]
        if ok:
            markdown.append(f"| {'yes' if disjoint else 'no'} | {', '.join(str(r['seed']) for r in ok)} | "
                            + " | ".join(format_mean_sd([r[k] for r in ok]) for k in ("val_oa", "oa", "aa", "kappa"))
                            + " |")
    save(f"classical_reference_{scene}" + (f"_{args.tag}" if args.tag else ""),
         {"env": args.env, "params": args.params, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
