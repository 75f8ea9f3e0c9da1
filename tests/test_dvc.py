"""DVC: `dvc repro` of a sub-chain in a temporary git clone with a tiny configuration (stages run, a
second repro skips them, a parameter change reruns only its dependents), and the whole graph checked
without running it: what each stage reads, writes and depends on, derived from the code."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedrs.federated.algorithms import ALGORITHMS, BASELINES, HORIZONTAL
from tests.conftest import INPROCESS, REPO, TINY_BASELINES, TINY_PARTITION, TINY_SCENE

pytestmark = pytest.mark.integration
STAGES = ["ingest", "patches", "partition", *(f"train_eval@{a}" for a in BASELINES), *HORIZONTAL,
          "feddiff_diffusion", "feddiff_features", "feddiff_classifier", "feddiff_centralized", "report"]


def _clone(target: Path) -> None:
    """The working tree as git sees it (tracked and untracked-but-not-ignored files), committed anew."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "clone"]):
        subprocess.run(["git", *args], cwd=target, check=True, env=_env())


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # our kedro
                "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1", "KEDRO_DISABLE_TELEMETRY": "true"})
    return env


def _dvc(root: Path, *args: str) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.mark.heavy(120)
def test_dvc_repro_runs_skips_and_reruns_only_dependents(tmp_path):
    """DVC's bookkeeping on a real sub-chain of dvc.yaml (scene → patches → partition → FedProx on the
    simulation engine): every stage on the way runs, a second repro skips them all, a parameter
    change reruns only the stage that reads it. The whole chain's wiring is checked statically
    (``test_every_stage_declares_the_files_its_pipeline_reads_and_writes``) and each pipeline runs
    end to end in tests/pipelines; running all 15 stages here cost 7 minutes of the suite's 10."""
    root = tmp_path / "clone"
    root.mkdir()
    _clone(root)
    # what is tested here is DVC's bookkeeping, not the kernels: the default mode runs the stages ~3× faster
    # (strict mode's bits are tests/test_reproducible.py's)
    spec = root / "dvc.yaml"
    assert "kedro: FEDRS_REPRODUCIBLE=1 kedro run" in spec.read_text()
    spec.write_text(spec.read_text().replace("kedro: FEDRS_REPRODUCIBLE=1 kedro run", "kedro: kedro run"))
    local = root / "conf" / "local"
    local.mkdir(exist_ok=True)
    mlflow_conf = yaml.safe_load((REPO / "conf" / "base" / "mlflow.yml").read_text())
    mlflow_conf["server"]["mlflow_tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    tiny = {"globals.yml": {"synthetic_scene": dict(TINY_SCENE)}, "mlflow.yml": mlflow_conf,
            "parameters_partition.yml": TINY_PARTITION, "parameters_baselines.yml": TINY_BASELINES,
            "parameters_federation.yml": INPROCESS}
    for name, content in tiny.items():
        (local / name).write_text(yaml.safe_dump(content, sort_keys=False))

    target = "train_eval@fedprox"
    assert _ran(_dvc(root, "repro", target)) == ["ingest", "patches", "partition", target]
    assert _ran(_dvc(root, "repro", target)) == []  # nothing changed: every stage skipped
    metrics = json.loads(_dvc(root, "metrics", "show", "--json"))
    assert "fedprox/metrics.json" in json.dumps(metrics)
    # metrics stay in git; models, predictions and figures are DVC's
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root, env=_env(),
                            capture_output=True, text=True, check=True).stdout
    assert "data/08_reporting/synthetic/fedprox/metrics.json" in status and "dvc.lock" in status
    assert ".pt" not in status and "prediction.npz" not in status and "confusion.png" not in status
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=_env())
    subprocess.run(["git", "commit", "-qm", "repro"], cwd=root, check=True, env=_env())

    params = root / "conf/base/parameters_baselines.yml"
    text = params.read_text()
    assert "proximal_mu: 0.01" in text
    params.write_text(text.replace("proximal_mu: 0.01", "proximal_mu: 0.1"))
    assert "0.1" in _dvc(root, "params", "diff")
    assert _ran(_dvc(root, "repro", target)) == [target]
    assert "train_eval@fedprox" not in _dvc(root, "status")  # recorded: up to date again


def test_every_plot_reads_an_output_of_a_stage():
    """`dvc plots show` after `dvc repro` finds every file the top-level plots name."""
    from tests.stage_dependencies import covered, declared, stages

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    outs = [o for stage in stages() for o in declared(stage)["outs"]]
    sources = [y for plot in spec["plots"] for definition in plot.values() for y in (definition.get("y") or {})]
    assert sources and all(covered(s, outs) for s in sources), sources


def _touch_param(path: Path, keys: list[str]) -> None:
    """Change the value under each dotted key of a YAML parameter file (a marker key in a block,
    another value for a scalar)."""
    content = yaml.safe_load(path.read_text())
    for dotted in keys:
        *parents, last = dotted.split(".")
        holder = content
        for part in parents:
            holder = holder[part]
        value = holder[last]
        if isinstance(value, dict):
            value["touched_by_test"] = True
        elif isinstance(value, bool):
            holder[last] = not value
        elif isinstance(value, int | float):
            holder[last] = value + 1
        else:
            holder[last] = f"{value}-touched"
    path.write_text(yaml.safe_dump(content, sort_keys=False))


def _changed_deps(root: Path) -> dict[str, dict]:
    """Stage → its changed dependencies as ``dvc status --json`` reports them."""
    status = json.loads(_dvc(root, "status", "--json"))
    out: dict[str, dict] = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict) and "changed deps" in entry:
                out.setdefault(stage.split(":")[-1], {}).update(entry["changed deps"])
    return out


def test_no_stage_goes_stale_when_its_code_params_or_globals_change(tmp_path):
    """Each stage must depend on every package file its nodes import, the catalog, every parameter
    block they take and every global those blocks interpolate (derived from the code by
    tests/stage_dependencies.py): change all of them in a scratch copy and every stage reports
    each as changed. Then the scene name moves every stage's paths."""
    from tests.stage_dependencies import covered, stage_requirements, stages

    root = tmp_path / "clone"
    root.mkdir()
    _clone(root)
    required = {stage: stage_requirements(cmd) for stage, cmd in stages().items()}
    files = sorted({f for r in required.values() for f in r["files"]})
    for name in files:
        with (root / name).open("a") as handle:
            handle.write("\n# touched by the staleness test\n")
    params: dict[str, set[str]] = {"conf/base/globals.yml": {g for r in required.values() for g in r["globals"]}}
    for r in required.values():
        for file, keys in r["params"].items():
            params.setdefault(file, set()).update(keys)
    for file, keys in params.items():
        _touch_param(root / file, sorted(keys))

    changed = _changed_deps(root)
    missing = []
    for stage, needs in required.items():
        deps = changed.get(stage, {})
        missing += [f"{stage}: {f}" for f in needs["files"] if not covered(f, list(deps))]
        wanted = {**needs["params"], "conf/base/globals.yml": needs["globals"]}
        for file, keys in wanted.items():
            seen = deps.get(file, {})  # "new": the whole file is new to the stage; else {key: change}
            listed = [key.replace(".", "/") for key in seen] if isinstance(seen, dict) else []
            missing += [f"{stage}: {file}:{k}" for k in keys
                        if not (seen == "new" or covered(k.replace(".", "/"), listed))]
    assert not missing, "stages that would not rerun:\n" + "\n".join(missing)

    (root / "conf/base/globals.yml").write_text(
        (REPO / "conf/base/globals.yml").read_text().replace("scene_name: synthetic", "scene_name: elsewhere"))
    listed = _dvc(root, "stage", "list")
    assert "data/02_intermediate/elsewhere" in listed and "/synthetic" not in listed


def test_stage_and_parameter_names_come_from_the_algorithm_table():
    """One source for algorithm names: dvc.yaml's stages and the parameter blocks follow
    ``fedrs.federated.algorithms``, and every stage of dvc.yaml is one of them or a data stage."""
    from tests.stage_dependencies import stages

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert spec["stages"]["train_eval"]["foreach"] == list(BASELINES)
    assert sorted(stages()) == sorted(STAGES)
    params = yaml.safe_load((REPO / "conf/base/parameters_baselines.yml").read_text())
    assert all(params[name]["training"]["algorithm"] == name for name in BASELINES)
    assert set(BASELINES) | set(HORIZONTAL) <= set(ALGORITHMS)
    from fedrs.results import MLFLOW_ROUND_KEYS, ROUND_KEYS  # the curves MLflow shows are kept in the summary

    assert set(MLFLOW_ROUND_KEYS) <= set(ROUND_KEYS)


def test_code_defaults_equal_the_baseline_parameters():
    """A setting missing from a parameter file means what the file would have said."""
    import dataclasses

    from fedrs.federated.local import TrainConfig
    from fedrs.federated.server.config import FederatedConfig

    block = yaml.safe_load((REPO / "conf/base/parameters_baselines.yml").read_text())["baseline"]
    for cls, values in ((TrainConfig, block["train"]), (FederatedConfig, block["federated"])):
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        differing = {k: (defaults[k], v) for k, v in values.items()
                     if k in defaults and not str(v).startswith("${") and defaults[k] != v}
        assert not differing, f"{cls.__name__} defaults differ from parameters_baselines.yml: {differing}"


def test_every_stage_declares_the_files_its_pipeline_reads_and_writes():
    """The DAG that `dvc repro` runs, checked without running it: every file a stage's pipeline
    writes is under one of its outs, every out is written, and every file it reads is one of its
    deps (so DVC orders and reruns the stages right). Scratch folders (checkpoints, deployment runs)
    are no one's output."""
    from tests.stage_dependencies import (
        SCRATCH,
        covered,
        dataset_path,
        declared,
        stage_pipeline,
        stages,
        written_by_loading,
    )

    scene = yaml.safe_load((REPO / "conf/base/globals.yml").read_text())["scene_name"]

    def paths(names: set[str]) -> set[str]:  # the base environment's paths, as the catalog writes them
        return {p.replace("${scene_name}", scene) for p in map(dataset_path, names) if p and not p.endswith(SCRATCH)}

    problems = []
    for stage, cmd in stages().items():
        pipe = stage_pipeline(cmd)
        wanted = {k: [p.replace("${scene_name}", scene) for p in v] for k, v in declared(stage).items()}
        filled = {i for i in pipe.inputs() if written_by_loading(i)}
        written, read = paths(pipe.all_outputs() | filled), paths(pipe.inputs() - filled)
        problems += [f"{stage} writes {p}, not among its outs" for p in sorted(written)
                     if not covered(p, wanted["outs"])]
        problems += [f"{stage} declares {o}, which its pipeline does not write" for o in wanted["outs"]
                     if not any(covered(p, [o]) or covered(o, [p]) for p in written)]
        problems += [f"{stage} reads {p}, not among its deps" for p in sorted(read)
                     if not (covered(p, wanted["deps"]) or any(covered(d, [p]) for d in wanted["deps"]))]
    assert not problems, "\n".join(problems)
