"""tests/ mirrors src/fedrs/: each module has tests/<package>/test_<module>.py, each pipeline a test
in tests/pipelines that runs it — except the modules named here, each with where it is tested."""

from tests.conftest import REPO, slices_for_workers

SRC = REPO / "src" / "fedrs"
ELSEWHERE = {
    "__main__.py": "`python -m fedrs` is Kedro's own entry point (tests/pipelines run the CLI's session)",
    "settings.py": "Kedro's project settings: every KedroSession test loads them",
    "errors.py": "the exception types only; each module's test raises them",
    "hooks.py": "the champion alias after a run: tests/test_registry.py and the pipeline tests' MLflow runs",
    "kernel_probe.py": "strict mode's yardstick: tests/test_reproducible.py",
    "pipeline_registry.py": "every pipeline built: tests/test_viz.py, tests/test_dvc.py",
    "datasets/_files.py": "atomic writes: tests/federated/test_checkpoint.py, tests/datasets/test_torch_artifact.py",
}


def test_every_module_has_its_test_file_or_says_where_it_is_tested():
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if path.name == "__init__.py" or relative.parts[0] == "pipelines" or str(relative) in ELSEWHERE:
            continue
        expected = REPO / "tests" / relative.parent / f"test_{path.stem}.py"
        if not expected.is_file():
            missing.append(f"{relative} → {expected.relative_to(REPO)}")
    assert not missing, "modules without a test file:\n" + "\n".join(missing)
    assert all((SRC / name).is_file() for name in ELSEWHERE), "an exemption names a module that is gone"


def test_every_pipeline_is_run_by_a_pipeline_test():
    """Each package of src/fedrs/pipelines has its nodes in a registered pipeline that a test in
    tests/pipelines runs by name (the evaluation template inside every algorithm's pipeline, say)."""
    from fedrs.pipeline_registry import register_pipelines

    tests = "\n".join(p.read_text() for p in (REPO / "tests" / "pipelines").glob("test_*.py"))
    run = {name for name in register_pipelines() if f'"{name}"' in tests or f"'{name}'" in tests}
    packages = sorted(p.name for p in (SRC / "pipelines").iterdir() if (p / "pipeline.py").is_file())
    covered = {node.func.__module__.split(".")[2] for name in run for node in register_pipelines()[name].nodes}
    assert run and not sorted(set(packages) - covered), sorted(set(packages) - covered)


def test_long_tests_start_first_at_the_head_of_each_workers_slice():
    """xdist deals worker w the w-th contiguous slice; each slice must open with its share of the
    long tests (longest first, balanced), the others keeping their collected order behind them."""
    costs = [None, None, 30.0, None, 200.0, None, 120.0, None, None, 60.0, None]
    order = slices_for_workers(costs, 2)
    assert sorted(order) == list(range(len(costs)))  # a permutation: nothing lost or run twice
    first, second = order[:5], order[5:]  # 11 // 2 = 5, then the remaining 6
    assert first[0] == 4 and second[:3] == [6, 9, 2]  # 200 against 120 + 60 + 30
    assert costs[first[1]] is None
    light = [i for i in order if costs[i] is None]
    assert light == sorted(light)
    assert slices_for_workers([None, 5.0], 1) == [1, 0]
