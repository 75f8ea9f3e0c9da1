"""What differential privacy costs: OA against ε for one algorithm on one scene.

``--level client`` (client-level DP on the aggregate): runs the algorithm's pipeline (KedroSession,
the project's parameters) once without DP, once with the DP aggregation but neither clipping nor
noise (equal weights: the aggregation's own cost, and the update norms that set the clipping norm
C = their median), then once per noise multiplier σ. ε is Opacus' RDP ε at the configured δ for the
run's releases (rounds and statistics pass); a round whose every update was rejected (non-finite
after a noisy aggregate) releases nothing and keeps the model, so the table says how many rounds
aggregated.

``--level record`` (DP-SGD in every client, ``fedrs.federated.record_privacy``): once without DP as
configured, once without DP with GroupNorm (DP-SGD refuses BatchNorm), once with DP-SGD but neither
clipping nor noise (its Poisson batches; the per-record gradient norms set C = their median, and
FedDiff's per-pixel output norms set the exchange's C), then once per σ — FedDiff's relayed outputs
noised with the same σ. ``--train KEY=VALUE`` sets training keys of every DP-SGD run (e.g.
``epochs=1 batch_size=64``: DP-SGD prefers fewer, larger steps), ``--model KEY=VALUE`` model keys of
every GroupNorm run (e.g. ``width=8 dim=16``: fewer parameters, less noise in total).

Classifier calibration is off in every run of those two levels, unless ``--calibrate`` (record level):
then every run calibrates — the DP runs with their class sums noised with the same σ, each pixel's
features clipped to the largest feature norm of the clear GroupNorm run (counted by the accountant).

``--level secure`` (Flower's SecAgg+ on every aggregate, ``fedrs.federated.secure``): the algorithm as
configured (calibration on, statistics in the clear), then under SecAgg+ without calibration and with
calibration — its class sums one more secure sum, each pixel's features clipped to ``feature_clip`` =
the largest feature norm the clear run reported (so nothing is clipped and the two calibrations
differ by SecAgg+'s rounding and the uncompressed uploads SecAgg+ needs), once per ``--seeds``.

Usage: .venv/bin/python bench/privacy_curves.py --project DIR [--env ENV] [--algorithm fedavg]
       [--level client|record|secure] [--seeds 42]
       [--sigmas 0.5 1 2 4] [--train epochs=1 ...] [--model width=8 ...] [--tag NAME]
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
# where each algorithm's blocks live in the parameters (federated, train, model), and its pipeline
BLOCKS = {"fedavg": ("baseline",), "fedprox": ("baseline",), "fedcmi": ("baseline",),
          "feddiff": ("feddiff", "classifier")}


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def overrides(algorithm: str, federated: dict[str, Any], train: dict[str, Any] | None = None,
              model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runtime parameters setting keys of the algorithm's federated, train and model blocks."""
    block = {"federated": federated, **({"train": train} if train else {}), **({"model": model} if model else {})}
    return nested(BLOCKS[algorithm], block)


def run(project: Path, env: str | None, algorithm: str, params: dict[str, Any],
        from_nodes: list[str] | None = None) -> dict[str, Any]:
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        scene = session.load_context().params["report"]["scene_name"]
        # up to the evaluation: the full-scene map is no part of the sweep (half an hour on Houston, 2 cores)
        session.run(pipeline_names=[algorithm], from_nodes=from_nodes, to_nodes=[f"{algorithm}.evaluate"])
    while mlflow.active_run() is not None:
        mlflow.end_run()
    metrics = json.loads((project / "data/08_reporting" / str(scene) / algorithm / "metrics.json").read_text())
    history = json.loads((project / "data/07_model_output" / str(scene) / algorithm / "history.json").read_text())
    rounds = history["rounds"]

    def median_of(key: str) -> float | None:  # only noiseless probes report norms (under noise they stay home)
        values = sorted(r[key] for r in rounds if r.get(key))
        return values[len(values) // 2] if values else None

    aggregated = sum(1 for r in rounds if r.get("aggregated"))
    return {"scene": scene, "oa": metrics["oa"], "aa": metrics["aa"], "kappa": metrics["kappa"],
            "val_oa": metrics.get("validation", {}).get("oa"),
            "rounds_aggregated": f"{aggregated}/{len(rounds)}",
            "epsilon": metrics["run"].get("dp_epsilon", metrics["run"].get("dp_record_epsilon")),
            "unit": metrics["run"].get("dp_unit", metrics["run"].get("dp_record_unit")),
            "not_covered": metrics["run"].get("dp_not_covered", metrics["run"].get("dp_record_not_covered")),
            "train_loss": [r.get("train_loss") for r in rounds],
            "update_norm_median": median_of("dp_update_norm_median"),
            "record_norm_median": median_of("train_dp_record_norm_median"),
            "exchange_norm_median": median_of("exchange_norm_median"),
            "feature_norm_max": rounds[-1].get("calibration_feature_norm_max"),
            "oa_before_calibration": metrics["run"].get("oa_before_calibration")}


def keyed(items: list[str]) -> dict[str, Any]:
    """``["epochs=1", "lr=0.01"]`` → ``{"epochs": 1, "lr": 0.01}`` (values read as JSON)."""
    return {k: json.loads(v) for k, v in (item.split("=", 1) for item in items)}


def loss_trend(losses: list[float | None]) -> str:
    """The training loss of the first and last rounds (– where it stayed on the clients: noised DP)."""
    known = [x for x in losses if x is not None]
    return f"{known[0]:.3g} → {known[-1]:.3g}" if known else "– (stays on the clients)"


def client_level(args: argparse.Namespace, project: Path) -> tuple[list[dict[str, Any]], str]:
    # classifier calibration and the clients' validation counts are refused beside client-level DP: calibration
    # off and the server scoring its copy of the validation pixels in every run, so like meets like
    off = {"calibration": None, "validation": "server"}
    rows = [{"setting": "no DP (sample weights)", "sigma": None,
             **run(project, args.env, args.algorithm, overrides(args.algorithm, {**off, "privacy": None}))}]
    probe = run(project, args.env, args.algorithm, overrides(args.algorithm, {
        **off, "privacy": {"noise_multiplier": 0.0, "clipping_norm": 1e9, "delta": args.delta}}), args.from_nodes)
    rows.append({"setting": "equal weights, no clipping, no noise", "sigma": 0.0, **probe, "epsilon": None})
    clip = float(probe["update_norm_median"])
    for sigma in args.sigmas:
        privacy = {"noise_multiplier": sigma, "clipping_norm": clip, "delta": args.delta}
        result = run(project, args.env, args.algorithm, overrides(args.algorithm, {**off, "privacy": privacy}),
                     args.from_nodes)
        rows.append({"setting": f"σ = {sigma:g}, C = {clip:.3g}", "sigma": sigma, **result})
        print(f"{args.algorithm} σ={sigma:g}: ε={result['epsilon']:.2f}, OA {result['oa']:.4f}", flush=True)
    return rows, (f"client-level DP (clipping norm C = the median update norm of the unclipped run, {clip:.3g}; "
                  f"δ = {args.delta:g}; Opacus RDP ε over every released aggregate)")


def record_level(args: argparse.Namespace, project: Path) -> tuple[list[dict[str, Any]], str]:
    algo, off = args.algorithm, {"calibration": None, "privacy": None}
    train, group = keyed(args.train), {**keyed(args.model), "norm": "group"}
    calibration: dict[str, Any] = {}
    if args.calibrate:  # calibrated in the clear first: its largest feature norm is every DP run's feature_clip
        off = {"calibration": {}, "privacy": None}
    rows = [{"setting": "no DP, as configured", "sigma": None, **run(project, args.env, algo, overrides(algo, off))}]
    rows.append({"setting": "no DP, GroupNorm", "sigma": None,
                 **run(project, args.env, algo, overrides(algo, off, model=group), args.from_nodes)})
    if args.calibrate:
        calibration = {"feature_clip": float(rows[-1]["feature_norm_max"])}
    probe_privacy = {"noise_multiplier": 0.0, "clipping_norm": 1e9, "delta": args.delta}
    # protected exchange: the server scores its validation copy (the clients' scoring would relay unprotected outputs)
    probe_exchange = ({"exchange_privacy": {"noise_multiplier": 0.0, "clipping_norm": 1e9}, "validation": "server"}
                      if algo == "feddiff" else {})
    probe = run(project, args.env, algo, overrides(algo, {**off, **probe_exchange},
                                                   {**train, "record_privacy": probe_privacy}, group), args.from_nodes)
    variant = ", ".join(args.model + args.train) or "as configured"
    rows.append({"setting": f"DP-SGD without clipping or noise ({variant})", "sigma": 0.0, **probe, "epsilon": None})
    clip, exchange_clip = float(probe["record_norm_median"]), probe["exchange_norm_median"]
    for sigma in args.sigmas:
        exchange = ({"exchange_privacy": {"noise_multiplier": sigma, "clipping_norm": float(exchange_clip)},
                     "validation": "server"} if algo == "feddiff" else {})
        privacy = {"noise_multiplier": sigma, "clipping_norm": clip, "delta": args.delta}
        noised = {"calibration": {**calibration, "noise_multiplier": sigma}} if calibration else {}
        result = run(project, args.env, algo, overrides(algo, {**off, **exchange, **noised},
                                                        {**train, "record_privacy": privacy}, group), args.from_nodes)
        rows.append({"setting": f"σ = {sigma:g}, C = {clip:.3g}", "sigma": sigma, **result})
        print(f"{algo} σ={sigma:g}: ε={result['epsilon']}, OA {result['oa']:.4f}", flush=True)
    exchange_note = (f"; FedDiff's relayed outputs clipped per pixel to their median norm {float(exchange_clip):.3g} "
                     "and noised with the same σ, counted by the accountant") if algo == "feddiff" else ""
    calibrated = (f"; calibrated, the class sums noised with the same σ (feature_clip {calibration['feature_clip']:.3g}"
                  ", the clear GroupNorm run's largest feature norm) and counted") if calibration else ""
    return rows, (f"record-level DP{calibrated} (DP-SGD in every client; per-record clipping norm C = the median "
                  "per-record "
                  f"gradient norm of the noiseless probe, {clip:.3g}{exchange_note}; δ = {args.delta:g}; "
                  f"Opacus RDP ε per {rows[-1].get('unit') or 'record'}, the largest over the organisations)")


def secure_level(args: argparse.Namespace, project: Path) -> tuple[list[dict[str, Any]], str]:
    algo, rows = args.algorithm, []
    for seed in args.seeds:
        seeded = {"seed": seed}
        clear = run(project, args.env, algo, {**seeded, **overrides(algo, {"privacy": None})})
        clip = float(clear["feature_norm_max"])
        # temperature scaling (FedDiff's default) would send the clients' loss curves outside the secure sum
        secure = {"privacy": None, "secure_aggregation": {}, "compression": None, "temperature": None}
        rows.append({"setting": "calibrated, statistics in the clear", "sigma": None, "seed": seed, **clear})
        for name, calibration in ((f"SecAgg+, calibrated (feature_clip {clip:.3g})", {"feature_clip": clip}),
                                  ("SecAgg+, no calibration", None)):
            params = overrides(algo, {**secure, **({"calibration": None} if calibration is None else {})})
            if algo == "fedcmi":  # its own block's temperature (its default) wins over the baseline block's
                params = deep_merge(params, {"fedcmi": {"training": {"federated": {"temperature": None}}}})
            if calibration is not None:  # the configured calibration block, with the public bound
                params = deep_merge(params, overrides(algo, {"calibration": calibration}))
            rows.append({"setting": name, "sigma": None, "seed": seed,
                         **run(project, args.env, algo, {**seeded, **params}, args.from_nodes)})
            print(f"{algo} seed {seed} {name}: OA {rows[-1]['oa']:.4f}", flush=True)
    return rows, ("Flower's SecAgg+ on every aggregate (uploads uncompressed: SecAgg+ sums masked integers), the "
                  "calibration's class sums one more secure sum scaled by public bounds; calibrated runs keep the "
                  "configured calibration settings")


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", required=True, help="a copy of this project (its outputs are overwritten)")
    parser.add_argument("--env", default=None)
    parser.add_argument("--algorithm", default="fedavg", choices=sorted(BLOCKS))
    parser.add_argument("--level", default="client", choices=["client", "record", "secure"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="secure level: the seeds run")
    parser.add_argument("--calibrate", action="store_true",
                        help="record level: calibration on in every run (noised with each σ under DP)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--train", nargs="*", default=[], help="record level: KEY=VALUE training keys of the DP runs")
    parser.add_argument("--model", nargs="*", default=[],
                        help="record level: KEY=VALUE model keys of every GroupNorm run (e.g. width=8 dim=16)")
    parser.add_argument("--tag", default="", help="a suffix of the result's name (a variant of the sweep)")
    parser.add_argument("--from-nodes", nargs="*", default=None,
                        help="after the first (full) run, rerun from these nodes only (FedDiff: "
                             "feddiff.train_classifier keeps stages 1 and 2, which the privacy block does not touch)")
    parser.add_argument("--into", default=str(ROOT),
                        help="the project whose report shows the sweep (data/08_reporting/<scene>/privacy/)")
    args = parser.parse_args()
    project = Path(args.project).resolve()
    level = {"client": client_level, "record": record_level, "secure": secure_level}[args.level]
    rows, what = level(args, project)
    scene = rows[0]["scene"]
    suffix = ("" if args.level == "client" else f"_{args.level}") + (f"_{args.tag}" if args.tag else "")
    markdown = [
        f"{args.algorithm} on the {scene} scene, {what}.",
        "",
        "| setting | ε | validation OA | test OA | AA | κ | rounds aggregated | train loss first → last |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {r['setting']} | {'∞' if r['epsilon'] is None else format(r['epsilon'], '.2f')} | "
          f"{'–' if r.get('val_oa') is None else format(r['val_oa'], '.4f')} | {r['oa']:.4f} | "
          f"{r['aa']:.4f} | {r['kappa']:.4f} | {r['rounds_aggregated']} | {loss_trend(r['train_loss'])} |"
          for r in rows],
        "",
        f"Not covered by ε: {next((r['not_covered'] for r in rows if r.get('not_covered')), '–')}.",
    ]
    sweep = {"algorithm": args.algorithm, "level": args.level, "scene": scene, "rows": rows, "delta": args.delta,
             "description": what}
    save(f"privacy{suffix}_{args.algorithm}_{scene}", sweep, markdown)
    if args.level == "secure":  # no ε: not a point of the report's OA-against-ε figure
        return
    # the report's input (report.privacy_curves): its section and OA-against-ε figure for this scene
    target = (Path(args.into).resolve() / "data/08_reporting" / str(scene) / "privacy"
              / f"{args.algorithm}{suffix}.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(sweep, indent=2) + "\n")
    partial.replace(target)
    print(f"wrote {target}", flush=True)


if __name__ == "__main__":
    main()
