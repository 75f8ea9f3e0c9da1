"""What secure aggregation (Flower's SecAgg+, one secure sum per modality group) costs per round:
round time, the protocol's own time, bytes up and down, against the same run without it — on the
default synthetic scene, through the real Kedro pipelines in a scratch copy of the project.

  FedAvg and FedCMI: 8 clients (half multimodal), so three secure sums a round (HSI encoder over the
  HSI holders, LiDAR encoder over the LiDAR holders, the rest over everyone); FedDiff's classifier:
  2 sites × {HSI, LiDAR}, three sums (HSI branch, LiDAR branch, fusion and heads). FedDiff's plain
  run is shown with its default upload codec and dense; a secure run cannot use the codec.

Usage: .venv/bin/python bench/secagg_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import kedro_run, save, scratch_project

SEQUENTIAL = {"num_cpus_per_client": 2, "total_cpus": 2}  # clients one at a time: times are not shared
STAGE_1 = {"federated": {"num_rounds": 1}, "train": {"epochs": 1}}  # FedDiff's DDPMs: not what is measured


def _summary(root: Path, algorithm: str) -> dict:
    history = json.loads((root / "data/07_model_output/synthetic" / algorithm / "history.json").read_text())
    metrics = json.loads((root / "data/08_reporting/synthetic" / algorithm / "metrics.json").read_text())
    rounds = history["rounds"]
    body = rounds[1:-1] if len(rounds) > 2 else rounds  # round 1 starts Ray; the last carries the statistics pass
    median = {k: statistics.median(float(r.get(k) or 0.0) for r in body)
              for k in ("seconds", "secagg_seconds", "bytes_up", "bytes_down", "bytes_up_dense")}
    return {**median, "secagg_sums": body[0].get("secagg_sums", 0), "oa": metrics["oa"],
            "rounds_aggregated": sum(1 for r in rounds if r.get("aggregated"))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for label, secure in (("plain", None), ("SecAgg+", {})):
            baseline = {"num_rounds": args.rounds, "secure_aggregation": secure}
            # calibration and temperature scaling (FedDiff's defaults; FedCMI's temperature below) are refused
            # beside SecAgg (with the clients scoring): off in both runs, like for like
            classifier = {"num_rounds": args.rounds, "secure_aggregation": secure, "calibration": None,
                          "temperature": None,
                          **({"compression": None} if secure is not None else {})}
            root = scratch_project(Path(work) / label, {
                "parameters_baselines.yml": {"baseline": {"federated": baseline, "resources": SEQUENTIAL}},
                # FedCMI's own block fits a temperature by default: off beside SecAgg, as FedDiff's
                "parameters_fedcmi.yml": {"fedcmi": {"training": {"federated": {"temperature": None}}}},
                "parameters_feddiff.yml": {"feddiff": {"diffusion": STAGE_1,
                                                       "classifier": {"federated": classifier},
                                                       "resources": SEQUENTIAL}},
            })
            for pipeline in ("fedavg", "fedcmi", "feddiff"):
                kedro_run(root, pipeline)
                rows.append({"algorithm": pipeline, "aggregation": label, **_summary(root, pipeline)})
                print(rows[-1], flush=True)
                if pipeline == "feddiff" and secure is None:  # the plain classifier once more, uploads dense
                    kedro_run(root, "feddiff", ["--from-nodes=feddiff.train_classifier",
                                                "--params=feddiff.classifier.federated.compression=null"])
                    rows.append({"algorithm": pipeline, "aggregation": "plain, dense uploads",
                                 **_summary(root, pipeline)})
                    print(rows[-1], flush=True)
    markdown = [f"Median round ({args.rounds} rounds, the first and the last left out: Ray's start-up, the "
                "statistics pass), clients one at a time. SecAgg s: the protocol's own time in the round "
                "(its four stages, every secure sum). MB up counts the protocol's messages (keys, shares, "
                "masked vectors).", "",
                "| algorithm | aggregation | secure sums | round s | SecAgg s | MB up | MB up dense | MB down | OA |",
                "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        markdown.append(f"| {r['algorithm']} | {r['aggregation']} | {r['secagg_sums']} | {r['seconds']:.2f} | "
                        f"{r['secagg_seconds']:.2f} | {r['bytes_up'] / 1e6:.2f} | {r['bytes_up_dense'] / 1e6:.2f} | "
                        f"{r['bytes_down'] / 1e6:.2f} | {r['oa']:.4f} |")
    save("secagg_overhead", {"rounds": args.rounds, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
