"""Print what a pipeline run produced and where: ``python -m fedrs.outputs --pipelines=data``.

Reads the project's own catalog, so the list follows the configuration (and ``--env``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def list_outputs(project_path: Path, pipeline_names: list[str], env: str | None = None) -> list[tuple[str, Path]]:
    bootstrap_project(project_path)
    with KedroSession.create(project_path=project_path, env=env) as session:
        catalog = session.load_context().catalog
        found = []
        names = set()
        for name in pipeline_names:
            names |= pipelines[name].all_outputs()
        for name in sorted(names):
            dataset = catalog.get(name)
            described = dataset._describe() if dataset is not None else {}
            target = described.get("filepath") or described.get("path")
            if target and Path(target).exists():
                found.append((name, Path(target)))
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipelines", default="__default__")
    parser.add_argument("--env", default=None)
    args = parser.parse_args()
    root = Path.cwd()
    outputs = list_outputs(root, args.pipelines.split(","), args.env)
    print(f"\nProduced by kedro run --pipelines={args.pipelines}:")
    for name, path in outputs:
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        print(f"  {name:40s} {str(rel):70s} {_human(_size(path)):>9s}")
    print("MLflow runs: mlflow server --backend-store-uri sqlite:///mlflow.db  (then http://127.0.0.1:5000)")


if __name__ == "__main__":
    main()
