"""Federated rounds on the default synthetic scene, driven through the real Kedro pipelines in a
scratch copy of the project (the real data/ and mlflow.db are not touched).

  rounds   per algorithm: median round time split into client compute, server work and framework
           overhead (clients one at a time, so overhead = time waiting on Flower − client compute),
           and bytes per round dense and as sent
  scaling  FedAvg round time and peak memory (whole process tree, Ray included) with 2, 4, 8, 16
           clients — the same pixels spread thinner (strong) and the same pixels per client (weak) —
           and with the scene at 1× and 4× the pixels
  e2e      kedro run --pipelines=feddiff and --pipelines=fedcmi: wall time and peak memory

Usage: .venv/bin/python bench/bench_federation.py rounds|scaling|e2e [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from common import kedro_run, save, scratch_project

SEQUENTIAL = {"num_cpus_per_client": os.cpu_count() or 1, "total_cpus": os.cpu_count() or 1}


def _history(root: Path, algorithm: str, name: str = "history.json") -> dict:
    return json.loads((root / "data/07_model_output/synthetic" / algorithm / name).read_text())


def _round_summary(rounds: list[dict], skip_first: bool = True) -> dict:
    body = rounds[1:] if skip_first and len(rounds) > 1 else rounds  # round 1 pays Ray's actor start-up
    med = {k: statistics.median(r[k] for r in body) for k in
           ("seconds", "wait_seconds", "server_seconds", "client_seconds", "bytes_up", "bytes_down",
            "bytes_up_dense", "bytes_down_dense")}
    med["overhead_seconds"] = max(med["wait_seconds"] - med["client_seconds"], 0.0)
    med["overhead_share"] = med["overhead_seconds"] / med["seconds"]
    med["first_round_seconds"] = rounds[0]["seconds"]
    return med


def rounds_bench(work: Path, num_rounds: int) -> None:
    federated = {"num_rounds": num_rounds}
    root = scratch_project(work / "rounds", {
        "parameters_baselines.yml": {"baseline": {"federated": federated, "resources": SEQUENTIAL}},
        "parameters_feddiff.yml": {"feddiff": {"diffusion": {"federated": {"num_rounds": 2}},
                                               "classifier": {"federated": federated}, "resources": SEQUENTIAL}},
    })
    rows = []
    for pipeline in ("fedavg", "fedprox", "fedcmi", "feddiff"):
        kedro_run(root, pipeline)
        rows.append({"algorithm": pipeline, **_round_summary(_history(root, pipeline)["rounds"])})
        if pipeline == "feddiff":
            for modality, stage in _history(root, "feddiff", "diffusion_history.json")["stages"].items():
                rows.append({"algorithm": f"feddiff diffusion ({modality})", **_round_summary(stage)})
    markdown = ["Median round (round 1, which starts the Ray actors, left out; clients one at a time). "
                "Overhead = waiting on Flower − the clients' own compute.", "",
                "| algorithm | round s | client compute s | server s | framework overhead s | overhead share | "
                "first round s | up MB sent / dense | down MB sent / dense |", "|---|---|---|---|---|---|---|---|---|"]
    markdown += [f"| {r['algorithm']} | {r['seconds']:.2f} | {r['client_seconds']:.2f} | {r['server_seconds']:.2f} | "
                 f"{r['overhead_seconds']:.2f} | {r['overhead_share']:.0%} | {r['first_round_seconds']:.2f} | "
                 f"{r['bytes_up'] / 1e6:.2f} / {r['bytes_up_dense'] / 1e6:.2f} | "
                 f"{r['bytes_down'] / 1e6:.2f} / {r['bytes_down_dense'] / 1e6:.2f} |" for r in rows]
    save("rounds", {"num_rounds": num_rounds, "rows": rows}, markdown)


def scaling_bench(work: Path, num_rounds: int) -> None:
    rows = []
    baseline = {"federated": {"num_rounds": num_rounds, "eval_samples": None}}
    # strong: the same 300 training pixels over more clients; weak: 80 pixels per client (8/class each)
    for axis in ("strong", "weak"):
        for clients in (2, 4, 8, 16):
            local = {"parameters_baselines.yml": {"baseline": baseline},
                     "parameters_partition.yml": {"horizontal": {"partition": {
                         "num_clients": clients, "scheme": "iid", "min_samples_per_client": 2}}}}
            if axis == "weak":
                local["globals.yml"] = {"synthetic_scene": {"train_per_class": 8 * clients}}
            root = scratch_project(work / f"{axis}{clients}", local)
            kedro_run(root, "data")
            wall, peak = kedro_run(root, "fedavg", ["--namespaces=fedavg"])
            train = sum(c["num_samples"] for c in _history(root, "fedavg")["clients"].values())
            rows.append({"axis": axis, "clients": clients, "scene": "1×", "train_pixels": train, "wall_s": wall,
                         "peak_mb": peak, **_round_summary(_history(root, "fedavg")["rounds"])})
    for factor, size in (("1×", 160), ("4×", 320)):
        root = scratch_project(work / f"scene{size}", {
            "globals.yml": {"synthetic_scene": {"size": size}},
            "parameters_baselines.yml": {"baseline": baseline}})
        kedro_run(root, "data")
        wall, peak = kedro_run(root, "fedavg", ["--namespaces=fedavg"])
        summary = _round_summary(_history(root, "fedavg")["rounds"])
        train = sum(c["num_samples"] for c in _history(root, "fedavg")["clients"].values())
        rows.append({"axis": "scene", "clients": 8, "scene": factor, "train_pixels": train, "wall_s": wall,
                     "peak_mb": peak, **summary})
    markdown = [
        "FedAvg, default model and local epochs, every test pixel scored after each round, "
        "clients in parallel as configured (1 CPU each). Peak memory: the whole process tree (Ray workers included).",
        "Strong: the same 300 training pixels over more clients; weak: 80 training pixels per client.",
        "",
        "| scaling | clients | training pixels | scene pixels | median round s | client compute s | "
        "fedavg stage wall s | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    markdown += [
        f"| {r['axis']} | {r['clients']} | {r['train_pixels']} | {r['scene']} | {r['seconds']:.2f} | "
        f"{r['client_seconds']:.2f} | {r['wall_s']:.1f} | {r['peak_mb']:,.0f} |"
        for r in rows
    ]
    save("scaling", {"num_rounds": num_rounds, "rows": rows}, markdown)


# environment variables that pick the CPU kernels: a run under them says so in its table
KERNEL_SETTINGS = ("FEDRS_REPRODUCIBLE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def minutes(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s"


def e2e_row(r: dict) -> str:
    """One run's line of the end-to-end table."""
    validation = "–" if r.get("val_oa") is None else f"{r['val_oa']:.4f}"
    return (f"| {r['pipeline']} | {r['params'] or '–'} | {minutes(r['wall_s'])} | {r['peak_mb'] / 1024:.2f} GiB | "
            f"{r['oa']:.4f} | {r['aa']:.4f} | {r['kappa']:.4f} | {validation} | {r['mb_sent']:,.0f} |")


def e2e_bench(work: Path, variants: list[str], name: str = "end_to_end") -> None:
    """Each variant ``pipeline`` or ``pipeline:k=v,...`` (kedro ``--params``) from an empty data/."""
    rows = []
    for i, variant in enumerate(variants):
        pipeline, _, params = variant.partition(":")
        root = scratch_project(work / f"{i}-{pipeline}", {})
        wall, peak = kedro_run(root, pipeline, [f"--params={params}"] if params else None)
        metrics = json.loads((root / "data/08_reporting/synthetic" / pipeline / "metrics.json").read_text())
        rows.append({"pipeline": pipeline, "params": params, "wall_s": wall, "peak_mb": peak, "oa": metrics["oa"],
                     "aa": metrics["aa"], "kappa": metrics["kappa"],
                     "val_oa": metrics.get("validation", {}).get("oa"),
                     "mb_sent": metrics.get("run", {}).get("bytes_sent", 0) / 1e6})
    kernels = [f"{k}={os.environ[k]}" for k in KERNEL_SETTINGS if os.environ.get(k)]
    markdown = [
        "`kedro run --pipelines=<name> [--params=...]` from an empty data/ (scene generation, training, "
        "evaluation and the classification map), default settings otherwise.",
        "",
        *([f"Kernels: {', '.join(kernels)}.", ""] if kernels else []),
        "| pipeline | params | wall time | peak memory (process tree) | OA | AA | κ | validation OA | MB sent |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    markdown += [e2e_row(r) for r in rows]
    save(name, {"rows": rows}, markdown)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["rounds", "scaling", "e2e"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["feddiff", "fedcmi"],
                        help="e2e: pipeline or pipeline:k=v,... (e.g. 'feddiff:feddiff.diffusion.modalities=[lidar]')")
    parser.add_argument("--name", default="end_to_end", help="e2e: the results file (bench/results/<name>)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedrs-bench-") as tmp:
        if args.what == "rounds":
            rounds_bench(Path(tmp), args.rounds)
        elif args.what == "scaling":
            scaling_bench(Path(tmp), args.rounds)
        else:
            e2e_bench(Path(tmp), args.variants, args.name)


if __name__ == "__main__":
    main()
