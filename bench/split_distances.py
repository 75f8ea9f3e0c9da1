"""How far each validation scheme's pixels lie from the training pixels of their own class, against
the test pixels: the distance (in pixels, Euclidean) from every validation or test pixel to the
nearest pixel of its class that the fold's model trained on. Validation that sits much nearer than
the test does measures interpolation within a ROI; much farther, transfer harder than the test asks.

    .venv/bin/python bench/split_distances.py --env houston2013 --seeds 1,2,3,4,5

For ``strips`` the folds the real-scene runs validate on (0 and 1), for ``rois`` all five; a class
with no training pixel left in a fold (none here) is left out of that fold's distances.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from common import save
from fedrs.splits import folds_for, validation_split


def distances_to_own_class(training: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per labelled pixel of ``labels`` (its class), the distance to the nearest ``training`` pixel of
    the same class; classes absent from ``training`` are skipped."""
    out = [np.zeros(0)]
    for klass in np.unique(labels[labels > 0]):
        if (training == klass).any():
            out.append(ndimage.distance_transform_edt(training != klass)[labels == klass])
    return np.concatenate(out)


def split_distances(train_labels: np.ndarray, test_labels: np.ndarray, by: str, seeds: list[int],
                    folds: list[int], validation_fraction: float = 0.2) -> dict:
    validation, test = [], []
    for seed in seeds:
        for fold in folds:
            training, held_out = validation_split(train_labels, validation_fraction, seed, fold, by)
            validation.append(distances_to_own_class(training, held_out))
            test.append(distances_to_own_class(training, test_labels))
    v, t = np.concatenate(validation), np.concatenate(test)
    return {"validation_by": by, "folds": folds, "seeds": seeds,
            "validation_median": float(np.median(v)), "validation_mean": float(v.mean()),
            "validation_within_3": float((v <= 3).mean()),
            "test_median": float(np.median(t)), "test_mean": float(t.mean()), "test_within_3": float((t <= 3).mean())}


def main() -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="houston2013")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=args.env) as session:
        catalog = session.load_context().catalog
        train = np.asarray(catalog.load("raw_train_labels").data).squeeze()
        test = np.asarray(catalog.load("raw_test_labels").data).squeeze()
    seeds = [int(s) for s in args.seeds.split(",")]
    # strips: the two folds the real-scene runs validate on; whole ROIs: all five
    rows = [split_distances(train, test, by, seeds, folds)
            for by, folds in (("strips", [0, 1]), ("rois", list(range(folds_for(0.2)))))]
    lines = [f"Scene `{args.env}`, seeds {args.seeds}: distance (pixels) from each held-out pixel to the nearest "
             "training pixel of its class in the fold's training split.", "",
             "| validation by | folds | validation: median / mean / ≤ 3 px | test: median / mean / ≤ 3 px |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['validation_by']} | {', '.join(map(str, r['folds']))} | "
                     f"{r['validation_median']:.0f} / {r['validation_mean']:.0f} / {r['validation_within_3']:.0%} | "
                     f"{r['test_median']:.0f} / {r['test_mean']:.0f} / {r['test_within_3']:.0%} |")
    for line in lines:
        print(line)
    save(f"split_distances_{args.env}", {"env": args.env, "rows": rows}, lines)


if __name__ == "__main__":
    main()
