"""Pool the runs of several ``real_scene_*`` result files into one table, paired by seed: e.g. seeds 1–5
of one sitting and seeds 6–10 of another, for the same algorithms at the same settings.

    .venv/bin/python bench/pool_results.py --name houston2013_seeds_1_10 --reference feddiff \\
        real_scene_houston2013_defaults_12_04:feddiff real_scene_houston2013_seeds_6_10:feddiff ...

Each source is ``FILE:ALGORITHM`` (a results file under bench/results without ``.json``, and the row
name in it), or ``FILE:ALGORITHM=LABEL`` to list its runs under another name (the same settings
measured before a default changed: ``...:feddiff=feddiff, LiDAR DDPM``); ``--seeds`` keeps only those
seeds; ``--confidence`` sets the paired intervals' level (0.99 for a second look at a variant
that was level at the first, so that looking twice does not adopt a null effect more often than
once at 95%); a run of the same row and seed in a later source replaces an earlier one. Nothing is re-run: the table is
``real_scene_results.summary`` over the pooled rows. ``--mean-over-folds`` first makes each
algorithm's runs of one seed (its validation folds; a run without a fold is fold 0) one row, every
measure their mean, so the pairing is by seed over several validation folds. The validation OA is
pooled instead where every run of the seed says how many pixels it validated (``val_pixels``): the
OA over all the folds' held-out pixels together, each fold weighted by its pixels — with all k folds
of a k-fold split, every training pixel scored once by a model that never trained on its blob.
"""

from __future__ import annotations

import argparse
import json
import statistics

from common import RESULTS, save
from real_scene_results import key, summary


def pooled(sources: list[str], seeds: set[int] | None = None) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for source in sources:
        name, _, wanted = source.partition(":")
        algorithm, _, label = wanted.partition("=")
        result = json.loads((RESULTS / f"{name}.json").read_text())
        found = [r for r in result["rows"]
                 if r["algorithm"] == algorithm and "error" not in r and (seeds is None or r["seed"] in seeds)]
        if not found:
            raise SystemExit(f"{name}.json has no run of {algorithm!r}")
        cpu = result.get("machine", "").split(",")[0] or None  # the CPU model of common.machine()
        for row in found:
            row = {**row, "algorithm": label or algorithm, "source": name, "cpu": cpu}
            rows[key(row)] = row
    return list(rows.values())


def cpu_kinds_note(rows: list[dict]) -> list[str]:
    """A warning where the pooled runs come from more than one CPU model: outside strict mode the kernels
    round otherwise on each, and on Houston the same 25 FedDiff runs scored 2.0 validation points apart
    (+0.7 … +3.4) between an Intel Xeon and an AMD EPYC — the size of the differences these tables test."""
    kinds: dict[str, set[str]] = {}
    for row in rows:
        if row.get("cpu"):
            kinds.setdefault(row["cpu"], set()).add(row["algorithm"])
    if len(kinds) < 2:
        return []
    where = "; ".join(f"{cpu}: {', '.join(sorted(algorithms))}" for cpu, algorithms in sorted(kinds.items()))
    return [f"**Runs from {len(kinds)} CPU kinds** ({where}): outside strict mode the same settings score "
            "differently on each (docs/reproducibility.md), so these pairs compare machines as well as "
            "settings.", ""]


MEASURES = ("oa", "aa", "kappa", "val_oa_final", "mb_sent", "mb_dense", "training_seconds")


def mean_over_folds(rows: list[dict]) -> list[dict]:
    """One row per algorithm and seed, each measure the mean over that seed's folds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["algorithm"], row["seed"]), []).append(row)
    out = []
    for (algorithm, seed), runs in groups.items():
        merged = {"algorithm": algorithm, "seed": seed, "folds": sorted(r.get("fold") or 0 for r in runs),
                  "source": ", ".join(dict.fromkeys(r["source"] for r in runs))}
        for measure in MEASURES:
            values = [r[measure] for r in runs if r.get(measure) is not None]
            merged[measure] = statistics.mean(values) if values else None
        if all(r.get("val_pixels") and r.get("val_oa_final") is not None for r in runs):
            # folds of whole ROIs differ in size (100–227 pixels on the Houston development scene): a mean
            # of their OAs would weigh a pixel of a small fold more than one of a large fold
            pixels = sum(r["val_pixels"] for r in runs)
            merged["val_oa_final"] = sum(r["val_oa_final"] * r["val_pixels"] for r in runs) / pixels
            merged["val_pixels"] = pixels
        out.append(merged)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True, help="the results file: real_scene_<name>")
    parser.add_argument("--scene", default="houston2013")
    parser.add_argument("--reference", default="feddiff")
    parser.add_argument("--mean-over-folds", action="store_true",
                        help="pair by seed, each seed's runs averaged over their validation folds")
    parser.add_argument("--seeds", default="", help="only these seeds (comma-separated), e.g. to pair with a "
                        "shorter series")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="level of the paired intervals (0.99: a second look at a variant level at the first)")
    parser.add_argument("sources", nargs="+", help="FILE:ALGORITHM or FILE:ALGORITHM=LABEL")
    args = parser.parse_args()
    if not 0.5 < args.confidence < 1:
        raise SystemExit(f"--confidence {args.confidence}: expected a level between 0.5 and 1, e.g. 0.95 or 0.99")
    rows = pooled(args.sources, {int(s) for s in args.seeds.split(",")} if args.seeds else None)
    mixed = cpu_kinds_note(rows)  # before the fold means, which keep no source
    if args.mean_over_folds:
        rows = mean_over_folds(rows)
        folds = sorted({tuple(r["folds"]) for r in rows})
        if len(folds) > 1:
            raise SystemExit(f"--mean-over-folds: the seeds' runs cover different folds {folds}; pool the same "
                             "folds for every algorithm and seed")
    save(f"real_scene_{args.name}", {"sources": args.sources, "rows": rows},
         [f"Pooled from {', '.join(f'`{s}`' for s in args.sources)} (no run repeated)"
          + (f"; each seed's runs averaged over validation folds {rows[0]['folds']}"
             + (" (validation OA pooled over the folds' pixels)" if all(r.get("val_pixels") for r in rows)
                else "") + "." if args.mean_over_folds else ".")] + [""] + mixed
         + summary(rows, args.scene, args.reference, args.confidence))


if __name__ == "__main__":
    main()
