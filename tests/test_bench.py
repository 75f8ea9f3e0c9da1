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
