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
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


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
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(), **result}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join([f"## {name}", "", f"{result['machine']}, {result['date']}", "",
                                                    *markdown, ""]))
    sections = sorted(RESULTS.glob("*.md"))
    body = "\n".join(p.read_text() for p in sections if p.name != "SUMMARY.md")
    (RESULTS / "SUMMARY.md").write_text("# Benchmark results\n\nWritten by the scripts in bench/; "
                                        "every figure is the median of repeated runs.\n\n" + body)
    print("\n".join(markdown))
