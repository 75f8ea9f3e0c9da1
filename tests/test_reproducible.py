"""FEDRS_REPRODUCIBLE pins the code paths before the first torch operation (a fresh process each)."""

import json
import os
import subprocess
import sys

import pytest

PROBE = "import json, fedrs.reproducible as r, torch; torch.ones(1) + 1; print(json.dumps(r.describe()))"


def describe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in {"ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA"}}
    env["FEDRS_REPRODUCIBLE"] = mode
    out = subprocess.run([sys.executable, "-c", "import fedrs; " + PROBE], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(("mode", "expected", "onednn"), [("1", "strict", False), ("isa", "isa", True)])
def test_the_modes_pin_avx2_and_say_so(mode, expected, onednn):
    got = describe(mode)
    assert got["reproducible"] == expected and got["mkldnn"] is onednn
    assert got["cpu_capability"] in {"AVX2", "DEFAULT"}  # never AVX512, whatever this CPU has


def test_off_by_default():
    assert describe("")["reproducible"] == "off"
