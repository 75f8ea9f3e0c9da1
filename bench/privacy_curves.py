"""What client-level differential privacy costs: OA against ε for one algorithm on one scene.

Runs the algorithm's pipeline (KedroSession, the project's parameters) once without DP, once with
the DP aggregation but neither clipping nor noise (equal weights: the aggregation's own cost, and
the update norms that set the clipping norm C = their median), then once per noise multiplier σ.
Classifier calibration is off in every run (it is refused beside DP). ε is Opacus' RDP ε at the
configured δ for the run's releases (rounds and statistics pass); a round whose every update
was rejected (non-finite after a noisy aggregate) releases nothing and keeps the model,
so the table says how many rounds aggregated.

Usage: .venv/bin/python bench/privacy_curves.py --project DIR [--env ENV] [--algorithm fedavg]
       [--sigmas 0.5 1 2 4]
Runs write into DIR's data/ (use a copy of the project: the runs overwrite the algorithm's outputs);
the sweep goes to bench/results and to this project's data/08_reporting/<scene>/privacy/<algorithm>.json,
which the report pipeline shows (a section and the OA-against-ε figure).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import save

ROOT = Path(__file__).resolve().parents[1]
# where each algorithm's federated block lives in the parameters, and its pipeline
BLOCKS = {"fedavg": ("baseline", "federated"), "fedprox": ("baseline", "federated"),
          "fedcmi": ("baseline", "federated"), "feddiff": ("feddiff", "classifier", "federated")}


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def run(project: Path, env: str | None, algorithm: str, privacy: dict[str, Any] | None,
        from_nodes: list[str] | None = None) -> dict[str, Any]:
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    # classifier calibration sends class statistics unprotected and is refused beside DP: off in every
    # run of the sweep, the one without DP included, so the curve compares like with like
    params = nested(BLOCKS[algorithm], {"privacy": privacy, "calibration": None})
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        scene = session.load_context().params["report"]["scene_name"]
        # up to the evaluation: the full-scene map is no part of the sweep (half an hour on Houston, 2 cores)
        session.run(pipeline_names=[algorithm], from_nodes=from_nodes, to_nodes=[f"{algorithm}.evaluate"])
    while mlflow.active_run() is not None:
        mlflow.end_run()
    metrics = json.loads((project / "data/08_reporting" / str(scene) / algorithm / "metrics.json").read_text())
    history = json.loads((project / "data/07_model_output" / str(scene) / algorithm / "history.json").read_text())
    # only the noiseless probe reports the clients' norms (under noised DP they stay on the clients)
    norms = [r["dp_update_norm_median"] for r in history["rounds"] if r.get("dp_update_norm_median")]
    aggregated = sum(1 for r in history["rounds"] if r.get("aggregated"))
    return {"scene": scene, "oa": metrics["oa"], "aa": metrics["aa"], "kappa": metrics["kappa"],
            "val_oa": metrics.get("validation", {}).get("oa"),
            "rounds_aggregated": f"{aggregated}/{len(history['rounds'])}",
            "epsilon": metrics["run"].get("dp_epsilon"), "update_norm_median": sorted(norms)[len(norms) // 2]
            if norms else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", required=True, help="a copy of this project (its outputs are overwritten)")
    parser.add_argument("--env", default=None)
    parser.add_argument("--algorithm", default="fedavg", choices=sorted(BLOCKS))
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--from-nodes", nargs="*", default=None,
                        help="after the first (full) run, rerun from these nodes only (FedDiff: "
                             "feddiff.train_classifier keeps stages 1 and 2, which the privacy block does not touch)")
    parser.add_argument("--into", default=str(ROOT),
                        help="the project whose report shows the sweep (data/08_reporting/<scene>/privacy/)")
    args = parser.parse_args()
    project = Path(args.project).resolve()
    rows = [{"setting": "no DP (sample weights)", "sigma": None, **run(project, args.env, args.algorithm,
                                                                               None)}]
    probe = run(project, args.env, args.algorithm,
                {"noise_multiplier": 0.0, "clipping_norm": 1e9, "delta": args.delta}, args.from_nodes)
    rows.append({"setting": "equal weights, no clipping, no noise", "sigma": 0.0, **probe, "epsilon": None})
    clip = float(probe["update_norm_median"])
    for sigma in args.sigmas:
        result = run(project, args.env, args.algorithm,
                     {"noise_multiplier": sigma, "clipping_norm": clip, "delta": args.delta}, args.from_nodes)
        rows.append({"setting": f"σ = {sigma:g}, C = {clip:.3g}", "sigma": sigma, **result})
        print(f"{args.algorithm} σ={sigma:g}: ε={result['epsilon']:.2f}, OA {result['oa']:.4f}", flush=True)
    scene = rows[0]["scene"]
    markdown = [
        f"{args.algorithm} on the {scene} scene, client-level DP (clipping norm C = the median update norm of the "
        f"unclipped run, {clip:.3g}; δ = {args.delta:g}; Opacus RDP ε over every released aggregate).",
        "",
        "| setting | ε | validation OA | test OA | AA | κ | rounds aggregated |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['setting']} | {'∞' if r['epsilon'] is None else format(r['epsilon'], '.2f')} | "
          f"{'–' if r.get('val_oa') is None else format(r['val_oa'], '.4f')} | {r['oa']:.4f} | "
          f"{r['aa']:.4f} | {r['kappa']:.4f} | {r['rounds_aggregated']} |" for r in rows],
    ]
    sweep = {"algorithm": args.algorithm, "scene": scene, "rows": rows, "clipping_norm": clip, "delta": args.delta}
    save(f"privacy_{args.algorithm}_{scene}", sweep, markdown)
    # the report's input (report.privacy_curves): its section and OA-against-ε figure for this scene
    target = Path(args.into).resolve() / "data/08_reporting" / str(scene) / "privacy" / f"{args.algorithm}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(sweep, indent=2) + "\n")
    partial.replace(target)
    print(f"wrote {target}", flush=True)


if __name__ == "__main__":
    main()
