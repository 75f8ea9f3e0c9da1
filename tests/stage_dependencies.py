"""What a DVC stage's outputs depend on, derived from the code rather than written by hand: the
Kedro nodes its command runs, the package modules they import (module-level and inside functions,
transitively, and those of the catalog's dataset classes they read and write), the parameter
blocks they take and the globals those blocks and catalog entries interpolate.

    .venv/bin/python -m tests.stage_dependencies     # print each stage's required dependencies
"""

from __future__ import annotations

import ast
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "fedrs"
GLOBAL_REF = re.compile(r"\$\{globals:([A-Za-z0-9_.]+)")
# run on every import of the package: it pins the kernels (FEDRS_REPRODUCIBLE). The hooks (settings.py)
# touch MLflow only, never a stage output
ALWAYS = ("fedrs",)


def module_file(module: str) -> Path | None:
    path = REPO / "src" / Path(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


@cache
def imports_of(module: str) -> frozenset[str]:
    """The fedrs modules ``module`` imports anywhere in its file (and their parent packages)."""
    path = module_file(module)
    if path is None:
        return frozenset()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this file is in
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        for name in names:
            if name.split(".")[0] == "fedrs" and module_file(name) is not None:
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(m for m in found if module_file(m) is not None)


def closure(roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imports_of(module) - seen)
    return seen


def stage_pipeline(cmd: str) -> Any:
    """The Kedro pipeline a stage's ``kedro run`` command runs, filtered as Kedro filters it."""
    from fedrs.pipeline_registry import register_pipelines

    args = shlex.split(cmd)
    options = dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--") and "=" in a)
    pipes = register_pipelines()
    pipe = sum((pipes[p] for p in options.get("pipelines", "__default__").split(",")), start=type(pipes["data"])([]))
    return pipe.filter(node_names=options["nodes"].split(",") if "nodes" in options else None,
                       from_nodes=options["from-nodes"].split(",") if "from-nodes" in options else None,
                       node_namespaces=options["namespaces"].split(",") if "namespaces" in options else None)


@cache
def parameter_files() -> dict[str, tuple[Path, Any]]:
    """Top-level parameter key → (its file in conf/base, its value)."""
    out = {}
    for path in sorted((REPO / "conf" / "base").glob("parameters*.yml")):
        for key, value in (yaml.safe_load(path.read_text()) or {}).items():
            out[key] = (path, value)
    return out


@cache
def catalog() -> dict[str, Any]:
    return yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())


def catalog_entry(dataset: str) -> Any:
    entries = catalog()
    if dataset in entries:
        return entries[dataset]
    for pattern, entry in entries.items():
        regex = "^" + re.sub(r"\\\{[a-z_]+\\\}", "[^.]+", re.escape(pattern)) + "$"
        if "{" in pattern and re.match(regex, dataset):
            return entry
    return None


def dataset_modules(entry: Any) -> set[str]:
    """The fedrs modules of a catalog entry's dataset classes (nested ``dataset:`` included)."""
    names = re.findall(r"\b(fedrs\.datasets(?:\.[A-Za-z_]+)+)", yaml.safe_dump(entry))
    return {m for name in names for m in (name.rpartition(".")[0],) if module_file(m) is not None}


# folders a run writes for itself and reads back only when it is resumed: no stage's output
SCRATCH = ("/checkpoint", "/deployment")


def dataset_path(dataset: str) -> str | None:
    """The file or folder a catalog dataset reads or writes, as dvc.yaml names it (``${scene_name}``),
    or None for one that holds no file (memory, MLflow only)."""
    entry = catalog_entry(dataset)
    if not isinstance(entry, dict):
        return None
    nested = entry["dataset"] if isinstance(entry.get("dataset"), dict) else {}
    path = entry.get("filepath") or entry.get("path") or nested.get("filepath")
    if not path:
        return None
    pattern = next((k for k in catalog() if "{" in k and catalog()[k] is entry), None)
    if pattern is not None:  # a dataset factory: fill its placeholders from the dataset's name
        for placeholder, value in zip(re.findall(r"\{([a-z_]+)\}", pattern), dataset.split("."), strict=False):
            path = path.replace(f"{{{placeholder}}}", value)
    return str(path).replace("${globals:scene_name}", "${scene_name}")


def written_by_loading(dataset: str) -> bool:
    """A node input the stage itself fills: the synthetic scene's rasters (generated on first load)
    and a folder path that need not exist (the clients write their feature stores there)."""
    entry = catalog_entry(dataset) or {}
    return str(entry.get("type", "")).endswith("SyntheticRasterDataset") or entry.get("must_exist") is False


def lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        value = value[part]
    return value


def stage_requirements(cmd: str) -> dict[str, Any]:
    """``files``: package files; ``params``: {parameter file: [keys]}; ``globals``: globals keys."""
    pipe = stage_pipeline(cmd)
    roots = set(ALWAYS)
    params: dict[str, set[str]] = {}
    globals_used: set[str] = set()
    for node in pipe.nodes:
        roots.add(node.func.__module__)
        if node.func.__module__.endswith(".nodes"):  # the wiring of the nodes is code too
            roots.add(node.func.__module__.removesuffix(".nodes") + ".pipeline")
        for name in node.inputs:
            if name.startswith("params:"):
                key = name.removeprefix("params:")
                path, value = parameter_files()[key.split(".")[0]]
                params.setdefault(str(path.relative_to(REPO)), set()).add(key)
                globals_used.update(GLOBAL_REF.findall(yaml.safe_dump(lookup({key.split(".")[0]: value}, key))))
        for dataset in node.inputs + node.outputs:
            entry = catalog_entry(dataset)
            if entry is not None:
                roots.update(dataset_modules(entry))
                globals_used.update(GLOBAL_REF.findall(yaml.safe_dump(entry)))
    modules = closure(roots)
    files = sorted(str(module_file(m).relative_to(REPO)) for m in modules)  # type: ignore[union-attr]
    files += ["src/fedrs/pipeline_registry.py", "conf/base/catalog.yml"]
    globals_used.discard("scene_name")  # in the stage's paths (dvc.yaml vars), not a value it reads
    return {"files": files, "params": {k: sorted(v) for k, v in params.items()}, "globals": sorted(globals_used)}


def covered(path: str, deps: list[str]) -> bool:
    """Whether a dependency list names ``path`` or a folder above it."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def compact(files: list[str]) -> list[str]:
    """``files`` with each folder of src/fedrs whose every .py file is listed named by the folder."""
    out = set(files)
    for folder in sorted({str(Path(f).parent) for f in files if f.startswith("src/")}, key=len):
        members = {str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*.py")}
        if members and members <= out and not any(covered(folder, [o]) for o in out if o != folder):
            out = (out - members) | {folder}
    return sorted(out)


def declared(stage: str) -> dict[str, list[str]]:
    """A stage's data ``deps`` and its ``outs`` (with metrics and plots) as dvc.yaml lists them."""
    name, _, item = stage.partition("@")
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]
    spec = spec["do"] if "do" in spec else spec

    def paths(entries: list[Any]) -> list[str]:
        out = [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries]
        return [p.replace("${item}", item) for p in out]

    deps = [p for p in paths(spec.get("deps", [])) if p.startswith("data/")]
    outs = paths(spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", []))
    return {"deps": deps, "outs": outs}


def stages() -> dict[str, str]:
    """Every stage of dvc.yaml (``foreach`` expanded as name@item) → its command."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    out = {}
    for name, stage in spec["stages"].items():
        if "foreach" in stage:
            for item in stage["foreach"]:
                out[f"{name}@{item}"] = stage["do"]["cmd"].replace("${item}", item)
        else:
            out[name] = stage["cmd"]
    return out


if __name__ == "__main__":
    for stage, command in stages().items():
        needed = stage_requirements(command)
        needed["files"] = compact(needed["files"])
        print(stage, yaml.safe_dump(needed, sort_keys=False), sep="\n")
