"""The MLflow model registry: the ``champion`` alias on each algorithm's best version by validation OA
(never the test OA: choosing a model is a choice, made on validation pixels), and
a registered version turned back into the artefact that predicts a classification map.

    python -m fedrs.registry map models:/feddiff@champion [--env trento] [--out map.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"


def promote_champion(client: MlflowClient, name: str, metric: str | None = None,
                     alias: str = CHAMPION) -> ModelVersion | None:
    """Point ``alias`` at the version of registered model ``name`` whose run scored the highest
    ``metric`` (default ``<name>.val_oa``, the validation OA); ties go to the newest version. Versions
    whose run lacks the metric are skipped; returns the champion, or None when no version qualifies."""
    metric = metric or f"{name}.val_oa"
    scored = []
    for version in client.search_model_versions(f"name='{name}'"):
        value = client.get_run(version.run_id).data.metrics.get(metric) if version.run_id else None
        if value is not None:
            scored.append((value, int(version.version), version))
    if not scored:
        return None
    best = max(scored, key=lambda item: item[:2])[2]
    client.set_registered_model_alias(name, alias, best.version)
    return best


def load_registered_artifact(uri: str, client: MlflowClient | None = None) -> dict[str, Any]:
    """The fedrs model artefact logged beside a registered version, e.g. ``models:/feddiff@champion``
    or ``models:/fedavg/3``: everything :func:`fedrs.evaluation.predict_scene` needs."""
    from fedrs.datasets import TorchArtifactDataset

    client = client or MlflowClient()
    name, _, ref = uri.removeprefix("models:/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif ref:
        version = client.get_model_version(name, ref)
    else:
        raise ValueError(f"Model URI {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(version.run_id, f"{name}/model.pt", tmp)
        return TorchArtifactDataset(path).load()


def _map(args: argparse.Namespace) -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from fedrs.pipelines.evaluation.nodes import classification_map

    bootstrap_project(Path.cwd())
    with KedroSession.create(project_path=Path.cwd(), env=args.env) as session:
        catalog = session.load_context().catalog
        # the map the evaluation pipeline draws, with this project's patch and inference settings
        _, figure = classification_map(load_registered_artifact(args.uri), catalog.load("scene"),
                                       catalog.load("normalisation"), catalog.load("params:patches"),
                                       catalog.load("params:evaluation"), catalog.load("params:compute"))
        figure.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"Classification map of {args.uri} written to {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedrs.registry")
    sub = parser.add_subparsers(dest="command", required=True)
    mapping = sub.add_parser("map", help="predict a classification map with a registered model version")
    mapping.add_argument("uri", help="models:/<name>@<alias> or models:/<name>/<version>")
    mapping.add_argument("--env", default=None, help="Kedro environment of the scene (default: local/base)")
    mapping.add_argument("--out", default="classification_map.png")
    args = parser.parse_args(argv)
    _map(args)


if __name__ == "__main__":
    main()
