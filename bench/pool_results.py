"""Pool the runs of several ``real_scene_*`` result files into one table, paired by seed: e.g. seeds 1–5
of one sitting and seeds 6–10 of another, for the same algorithms at the same settings.

    .venv/bin/python bench/pool_results.py --name houston2013_seeds_1_10 --reference feddiff \\
        real_scene_houston2013_defaults_12_04:feddiff real_scene_houston2013_seeds_6_10:feddiff ...

Each source is ``FILE:ALGORITHM`` (a results file under bench/results without ``.json``, and the row
name in it), or ``FILE:ALGORITHM=LABEL`` to list its runs under another name (the same settings
measured before a default changed: ``...:feddiff=feddiff, LiDAR DDPM``); a run of the same row and
seed in a later source replaces an earlier one. Nothing is re-run: the table is
``real_scene_results.summary`` over the pooled rows.
"""

from __future__ import annotations

import argparse
import json

from common import RESULTS, save
from real_scene_results import key, summary


def pooled(sources: list[str]) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for source in sources:
        name, _, wanted = source.partition(":")
        algorithm, _, label = wanted.partition("=")
        found = [r for r in json.loads((RESULTS / f"{name}.json").read_text())["rows"]
                 if r["algorithm"] == algorithm and "error" not in r]
        if not found:
            raise SystemExit(f"{name}.json has no run of {algorithm!r}")
        for row in found:
            row = {**row, "algorithm": label or algorithm, "source": name}
            rows[key(row)] = row
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True, help="the results file: real_scene_<name>")
    parser.add_argument("--scene", default="houston2013")
    parser.add_argument("--reference", default="feddiff")
    parser.add_argument("sources", nargs="+", help="FILE:ALGORITHM or FILE:ALGORITHM=LABEL")
    args = parser.parse_args()
    rows = pooled(args.sources)
    save(f"real_scene_{args.name}", {"sources": args.sources, "rows": rows},
         [f"Pooled from {', '.join(f'`{s}`' for s in args.sources)} (no run repeated)."] + [""]
         + summary(rows, args.scene, args.reference))


if __name__ == "__main__":
    main()
