"""The bench scripts run (tiny sizes, results redirected): they cannot rot. No timing is asserted."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("script, args, name", [
    ("bench_unet.py", ["--widths", "8", "--bands", "5", "--batch", "4", "--steps", "1", "--bf16-steps", "1"], "unet"),
    ("bench_features.py", ["--widths", "8", "--bands", "3", "--patches", "16", "--repeats", "1"], "features"),
    ("bench_patches.py", ["--scale", "0.05", "--repeats", "1"], "patches"),
])
def test_bench_script_writes_results(tmp_path, script, args, name):
    env = {**os.environ, "FEDRS_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["machine"] and result["rows"] and all(r.get("samples_per_s", r.get("patches_per_s", 0)) > 0
                                                          for r in result["rows"])
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert f"## {name}" in summary and "|" in summary


def test_the_feddiff_map_bench_reports_throughput_and_the_flop_ceiling(tmp_path):
    env = {**os.environ, "FEDRS_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_feddiff_map.py"), "--size", "10", "--bands", "6",
                           "--repeats", "1", "--batch", "64"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "feddiff_map.json").read_text())
    assert result["pixels"] == 100 and result["pixels_per_s"] > 0 and result["gflop_per_pixel"] > 0
    assert result["ceiling_pixels_per_s"] == result["gemm_gflops"] / result["gflop_per_pixel"]
    assert set(result["split_seconds"]) == {"features", "classifier"}


def test_round_summary_splits_time_and_leaves_out_the_first_round():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from bench_federation import _round_summary
    finally:
        sys.path.remove(str(REPO / "bench"))
    row = {"wait_seconds": 0.8, "server_seconds": 0.2, "client_seconds": 0.6, "bytes_up": 10, "bytes_down": 20,
           "bytes_up_dense": 40, "bytes_down_dense": 20}
    rounds = [{**row, "seconds": 5.0, "wait_seconds": 4.8}, {**row, "seconds": 1.0}, {**row, "seconds": 1.0}]
    summary = _round_summary(rounds)
    assert summary["seconds"] == 1.0 and summary["first_round_seconds"] == 5.0
    assert summary["overhead_seconds"] == pytest.approx(0.2) and summary["overhead_share"] == pytest.approx(0.2)
