"""Shared bench helpers: the machine's description, medians of repeated timings, peak memory, and
saving each bench as bench/results/<name>.json plus a Markdown section of bench/results/SUMMARY.md."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(os.environ.get("FEDRS_BENCH_RESULTS") or Path(__file__).parent / "results")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matrix-multiply rate: the ceiling any conv-bound model can reach here."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / median_seconds(lambda: a @ b, repeats) / 1e9


def save(name: str, result: dict, markdown: list[str]) -> None:
    """Write results/<name>.json and (re)write this bench's section of results/SUMMARY.md."""
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), **result}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join([f"## {name}", "", f"{result['machine']}, {result['date']}", "",
                                                    *markdown, ""]))
    sections = sorted(RESULTS.glob("*.md"))
    body = "\n".join(p.read_text() for p in sections if p.name != "SUMMARY.md")
    (RESULTS / "SUMMARY.md").write_text("# Benchmark results\n\nWritten by the scripts in bench/; "
                                        "every figure is the median of repeated runs.\n\n" + body)
    print("\n".join(markdown))


class TreeMemory:
    """Peak resident memory of this process and all its descendants (Ray workers, kedro subprocesses),
    sampled every ``interval`` seconds on a background thread: use as a context manager."""

    def __init__(self, interval: float = 0.2, root: int | None = None):
        import threading

        self.interval, self.root, self.peak_mb = interval, root or os.getpid(), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        import psutil

        try:
            proc = psutil.Process(self.root)
            total = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            return total / 2 ** 20
        except psutil.Error:
            return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def scratch_project(root: Path, local: dict[str, dict]) -> Path:
    """A throw-away copy of the project's configuration under ``root`` with ``conf/local`` overrides,
    so benches never touch the real data/ or mlflow.db."""
    import shutil

    import yaml

    repo = Path(__file__).resolve().parents[1]
    root.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(repo / name, root / name)
    shutil.copytree(repo / "conf", root / "conf", ignore=shutil.ignore_patterns("local"), dirs_exist_ok=True)
    (root / "conf" / "local").mkdir(exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    mlflow_conf = yaml.safe_load((repo / "conf" / "base" / "mlflow.yml").read_text())
    mlflow_conf["server"]["mlflow_tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    for name, content in {"mlflow.yml": mlflow_conf, **local}.items():
        (root / "conf" / "local" / name).write_text(yaml.safe_dump(content, sort_keys=False))
    return root


def kedro_run(root: Path, pipeline: str, extra: list[str] | None = None) -> tuple[float, float]:
    """``kedro run --pipelines=<pipeline>`` in ``root`` as a subprocess: (wall seconds, peak MiB of its tree)."""
    import subprocess
    import sys

    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "FLWR_TELEMETRY_ENABLED": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    kedro = str(Path(sys.executable).parent / "kedro")
    start = time.perf_counter()
    proc = subprocess.Popen([kedro, "run", f"--pipelines={pipeline}", *(extra or [])], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with TreeMemory(root=proc.pid) as memory:
        _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"kedro run --pipelines={pipeline} failed in {root}:\n{err[-3000:]}")
    return time.perf_counter() - start, memory.peak_mb
