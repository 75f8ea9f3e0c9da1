"""The ServerApp for Flower's deployment engine (SuperLink + one SuperNode per organisation).

It runs the same round loop as the simulation. Everything it needs comes from one JSON settings
file named in the run config (``settings-file``):

    {"federated": {... FederatedConfig ...}, "test_patches": "/abs/test_patches.npz",
     "expected_nodes": 2, "output_dir": "/abs/run"}

It writes ``model.pt`` (global state), ``history.json`` and ``traffic.json`` into ``output_dir``,
each atomically, and ``status.json`` last — so a caller waits for that file, or for the run to be
``finished:completed`` in ``flwr ls``. The ClientApp is ``fedrs.federated.client_app:app``; each
SuperNode names its own partition file in its node config (``partition-path``).

``python -m fedrs.federated.deployment settings ...`` writes such a file from the project's
configuration (see the README, "Scale-out").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrs.datasets._files import atomic_path
from fedrs.datasets.npz import NpzDataset
from fedrs.federated.server import FederatedConfig, run_rounds

app = ServerApp()


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(value, indent=1, default=str))


def run_from_settings(grid: Grid, settings: dict[str, Any]) -> dict[str, Any]:
    cfg = FederatedConfig.from_dict(settings["federated"])
    test = NpzDataset(settings["test_patches"]).load()
    out = Path(settings["output_dir"])
    try:
        result = run_rounds(grid, cfg, test, expected_nodes=int(settings["expected_nodes"]))
    except Exception as exc:
        _write_json(out / "status.json", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    with atomic_path(out / "model.pt", suffix=".pt") as tmp:
        torch.save({"algorithm": cfg.algorithm, "spec": cfg.model, "state": result["state"]}, tmp)
    _write_json(
        out / "history.json", {"algorithm": cfg.algorithm, "rounds": result["history"], "clients": result["clients"]}
    )
    _write_json(out / "traffic.json", result["traffic"])
    _write_json(out / "status.json", {"status": "completed", "rounds": len(result["history"])})
    return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings_file = str(context.run_config.get("settings-file", ""))
    if not settings_file:
        raise ValueError(
            "run config 'settings-file' is empty; pass --run-config 'settings-file=\"/abs/settings.json\"'"
        )
    run_from_settings(grid, json.loads(Path(settings_file).read_text()))


def write_settings(
    algorithm: str, output_dir: str, expected_nodes: int, env: str | None = None, project_path: str = "."
) -> dict[str, Any]:
    """Settings for a deployment run, from the Kedro project's parameters and catalog."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from fedrs.results import merge, model_spec

    root = Path(project_path).resolve()
    bootstrap_project(root)
    session = KedroSession.create(project_path=root, env=env)
    with session:
        context = session.load_context()
        params = merge(context.params["baseline"], context.params[algorithm]["training"])
        dataset = context.catalog.get("test_patches")
        if dataset is None:
            raise ValueError(f"the catalog of {root} has no test_patches entry")
        test_path = dataset._describe()["filepath"]
    test = NpzDataset(str(test_path)).load()
    federated = {
        **params.get("federated", {}),
        "algorithm": params["algorithm"],
        "model": model_spec(test, params.get("model", {})),
        "train": params.get("train", {}),
        "seed": int(params["seed"]),
        "partition_dir": "",
    }
    return {
        "federated": federated,
        "test_patches": str(Path(test_path).resolve()),
        "expected_nodes": expected_nodes,
        "output_dir": str(Path(output_dir).resolve()),
    }


def _cli() -> None:
    parser = argparse.ArgumentParser(description="Write the settings file of a deployment-engine run.")
    sub = parser.add_subparsers(dest="command", required=True)
    settings = sub.add_parser("settings")
    settings.add_argument("--algorithm", required=True)
    settings.add_argument("--output-dir", required=True, help="where the ServerApp writes model.pt, history.json")
    settings.add_argument("--nodes", type=int, required=True, help="SuperNodes to wait for")
    settings.add_argument("--env", default=None)
    settings.add_argument("--file", required=True, help="the settings JSON to write")
    args = parser.parse_args()
    value = write_settings(args.algorithm, args.output_dir, args.nodes, args.env)
    _write_json(Path(args.file), value)
    print(f"wrote {args.file}")


if __name__ == "__main__":
    _cli()
