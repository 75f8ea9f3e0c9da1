"""FEDRS_REPRODUCIBLE pins the code paths before the first torch operation (a fresh process each),
and the strict level gives the committed bits on whatever CPU kind runs the suite."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedrs.reproducible import CAPS, STRICT_ENV

PROBE = "import json, fedrs.reproducible as r, torch; torch.ones(1) + 1; print(json.dumps(r.describe()))"
# The strict probe's digest (fedrs.kernel_probe.probe(steps=4, width=16)), measured on an AMD EPYC with
# AVX-512 and equal under qemu's Intel Haswell and AMD EPYC-Rome models (AVX2 only, other vendor, other
# cache sizes); the 20-step digests of every kind are in bench/results/reproducible_digests.json. CI
# draws its CPU kind: this is the test that fails when strict mode stops being identical across kinds.
STRICT_DIGEST = "faf9193d01f6da78"


def run_child(code: str, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {*CAPS, *STRICT_ENV, "FEDRS_THREADS"}}
    env["FEDRS_REPRODUCIBLE"] = mode
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("mode", "expected", "onednn"), [("1", "strict", False), ("isa", "isa", True)])
def test_the_modes_pin_avx2_and_say_so(mode, expected, onednn):
    got = run_child("import fedrs; " + PROBE, mode)
    assert got["reproducible"] == expected and got["mkldnn"] is onednn
    assert got["cpu_capability"] in {"AVX2", "DEFAULT"}  # never AVX512, whatever this CPU has
    strict = expected == "strict"
    assert got["nnpack"] is not strict and got["portable_kernels"] is strict
    if strict:  # the thread count is pinned, not the number of cores
        assert got["threads"] == "2"


def test_off_by_default():
    assert run_child("import fedrs; " + PROBE, "")["reproducible"] == "off"


def test_strict_mode_gives_the_committed_digest_on_this_cpu():
    out = run_child("import json, fedrs.kernel_probe as p; print(json.dumps(p.probe(steps=4, width=16)))", "1")
    assert out["mode"]["reproducible"] == "strict" and out["mode"]["portable_kernels"]
    assert out["digest"] == STRICT_DIGEST, (
        f"strict mode on {out['machine']} gives {out['digest']}, not the committed {STRICT_DIGEST}: find the operation "
        "that differs with bench/bench_reproducible.py --trace on both machines and --compare")


def test_strict_mode_refuses_a_process_whose_numpy_runs_avx512_code():
    """NumPy reads its dispatch caps once, when it loads: strict mode set after that cannot hold."""
    env = {k: v for k, v in os.environ.items() if k not in {*CAPS, *STRICT_ENV}}
    env["FEDRS_REPRODUCIBLE"] = "1"
    code = ("import numpy\nfrom numpy._core._multiarray_umath import __cpu_features__ as f\n"
            "avx512 = any(f.get(k) for k in ('X86_V4', 'AVX512_ICL', 'AVX512_SPR'))\n"
            "try:\n    import fedrs\nexcept Exception as e:\n    print(type(e).__name__, avx512)\nelse:\n"
            "    print('imported', avx512)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() in (["ReproducibleModeError", "True"], ["imported", "False"])  # no AVX-512 here: nothing to cap


def test_the_trace_names_the_first_operation_that_differs():
    from fedrs.kernel_probe import first_difference

    a = [("aten.add", "1"), ("aten.mm", "2"), ("aten.sum", "3")]
    assert first_difference(a, list(a)) is None
    assert first_difference(a, [a[0], ("aten.mm", "9"), a[2]]) == 1
    assert first_difference(a, a[:2]) == 2


# tests/strict_runs.py's digests (tiny FedAvg with codec and calibration, with DP, with SecAgg+ and DP,
# FedCMI, FedDiff with exchange, codec and calibration, the same uncalibrated with augmentation, a DDPM round
# and its features), measured as STRICT_DIGEST was (qemu with NumPy's AVX2 code off on both sides: see
# docs/reproducibility.md). They also pin behaviour: a refactoring that changes one changed what a run
# computes. (2026-12-03: the DP and FedDiff digests moved with their history rows — no loss or norm under DP,
# the DP unit, the relayed outputs counted; their weights and test scores were checked equal to the commit
# before. Later that day every one moved again only because the per-round scores were renamed test_* → val_*
# (each round is now scored on validation pixels): with the old names the six digests were the committed ones.
# Then the two calibrated runs moved because calibration changed what is sent: a client withholds a class it
# holds fewer than 5 pixels of, FedDiff sends once per site, a class nobody sent keeps its row of the last
# layer; the other five stayed. The DDPM round's digest moved when its history rows gained the denoising
# measure (val_psnr_t*, val_psnr_gain_t*); the features computed from its U-Net stayed. 2026-12-04: the two
# calibrated runs moved because their last history row gained calibration_feature_norm_max (without it: the
# committed digests); the SecAgg+ DP run because its secure sums' requests carry two more numbers (the range
# and total weight the client checks against: 48 more bytes down a round; its weights and scores were checked
# bit-equal to the commit before); the other four stayed. 2026-12-05: the five classifier runs moved because
# each round's history row gained the global model's validation cross-entropy (val_loss,
# val_loss_growing_rounds); with those keys left out of the digest all seven are the committed ones, measured
# on the Intel Xeon — the new values are this Xeon's; re-measured later that day under qemu's EPYC-Rome
# (NumPy's AVX2 code off): all five equal, and the DDPM pair equal to its native AVX2-off digests. A FedDiff
# run with dihedral augmentation joined them: its turns are integer draws and exact copies, and the digest is
# what shows no kernel enters — equal under qemu's EPYC-Rome too. 2026-12-06: the two FedDiff runs moved
# because each round's row gained the unimodal heads' cross-entropy (train_unimodal_ce); with that key
# left out of the digest both are the committed ones, measured on an AMD EPYC with AVX-512 — the new
# values are that machine's, not re-run under emulation. Later that day a FedDiff run with its clients
# scoring and temperature scaling joined them (the curve in float32 as the model's own loss, T to four
# significant digits): measured on that AMD EPYC, no qemu on the machine to re-run it emulated.)
STRICT_RUNS = {"fedavg": "08be4d39197dc663", "fedavg_dp": "a34223cfb980a30e", "fedavg_secure_dp": "5688aaf816275c8f",
               "fedcmi": "a3dd77deccf51d66", "feddiff": "43ccb9a8a060fa5e", "feddiff_temperature": "4dadf6d47cf9ad6d",
               "feddiff_augmented": "389e751cc4a26aed", "ddpm_hsi": "1a5aef03220395c1",
               "ddpm_features": "49bfba186a94e65a"}


@pytest.mark.integration
@pytest.mark.heavy(15)
def test_strict_federated_runs_give_the_committed_digests_on_this_cpu():
    env = {k: v for k, v in os.environ.items() if k not in {*CAPS, *STRICT_ENV, "FEDRS_THREADS"}}
    env["FEDRS_REPRODUCIBLE"] = "1"
    done = subprocess.run([sys.executable, "-m", "tests.strict_runs"], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    differing = {k: (got.get(k), v) for k, v in STRICT_RUNS.items() if got.get(k) != v}
    assert not differing, f"strict runs that gave other bits on this CPU (got, committed): {differing}"
