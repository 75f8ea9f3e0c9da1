"""The bench scripts run (tiny sizes, results redirected): they cannot rot. No timing is asserted."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
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


def test_wall_times_round_to_whole_seconds_before_splitting_minutes():
    """179.6 s is 3 min 0 s, not "2 min 60 s" (how the end-to-end table once printed it)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from bench_federation import minutes
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert minutes(179.6) == "3 min 0 s" and minutes(59.4) == "0 min 59 s" and minutes(217.0) == "3 min 37 s"


def test_the_end_to_end_table_gives_test_and_validation_scores():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from bench_federation import e2e_row
    finally:
        sys.path.remove(str(REPO / "bench"))
    row = {"pipeline": "feddiff", "params": "", "wall_s": 179.6, "peak_mb": 4608.0, "oa": 0.90648, "aa": 0.95725,
           "kappa": 0.90261, "val_oa": 0.9, "mb_sent": 198.04}
    assert e2e_row(row) == "| feddiff | – | 3 min 0 s | 4.50 GiB | 0.9065 | 0.9573 | 0.9026 | 0.9000 | 198 |"
    assert e2e_row({**row, "val_oa": None}).split(" | ")[-2] == "–"


def test_pooled_results_pair_runs_from_two_sittings_by_seed(tmp_path):
    """bench/pool_results.py: seeds 1–2 from one file and 3–4 from another become one paired table; only
    the named rows are taken (the other file's feddiff, at other settings, stays out)."""
    def run(algorithm, seed, oa):
        return {"algorithm": algorithm, "params": "", "seed": seed, "oa": oa, "aa": oa, "kappa": oa,
                "val_oa_final": oa + 0.1, "mb_sent": 1.0, "mb_dense": 1.0, "training_seconds": 1.0}

    first = [run("feddiff", 1, 0.80), run("feddiff", 2, 0.82), run("fedavg", 1, 0.70), run("fedavg", 2, 0.71)]
    second = [run("feddiff", 3, 0.81), run("feddiff", 4, 0.83), run("fedavg", 3, 0.72), run("fedavg", 4, 0.70),
              run("feddiff, other settings", 3, 0.10)]
    for name, rows in (("a", first), ("b", second)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"rows": rows}))
    env = {**os.environ, "FEDRS_BENCH_RESULTS": str(tmp_path)}
    command = [sys.executable, str(REPO / "bench" / "pool_results.py"), "--name", "pooled", "--scene", "tiny",
               "a:feddiff", "b:feddiff", "a:fedavg", "b:fedavg"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pooled = json.loads((tmp_path / "real_scene_pooled.json").read_text())["rows"]
    assert sorted((r["algorithm"], r["seed"]) for r in pooled) == sorted(
        [(a, s) for a in ("feddiff", "fedavg") for s in (1, 2, 3, 4)])
    table = (tmp_path / "real_scene_pooled.md").read_text()
    assert "| feddiff | 1, 2, 3, 4 |" in table and "feddiff is better than fedavg (+10.8 points" in table
    assert "4 seeds" in table
    # a row listed under another name (the same settings measured before a default changed)
    renamed = subprocess.run(command[:3] + ["renamed", *command[4:6], "a:fedavg=baseline", "b:fedavg=baseline",
                                            "a:feddiff", "b:feddiff"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert renamed.returncode == 0, renamed.stderr[-2000:]
    relabelled = json.loads((tmp_path / "real_scene_renamed.json").read_text())["rows"]
    assert sorted({r["algorithm"] for r in relabelled}) == ["baseline", "feddiff"]
    assert "feddiff is better than baseline (+10.8 points" in (tmp_path / "real_scene_renamed.md").read_text()
    # several validation folds per seed: each seed's runs averaged before the pairing
    folds = [{**run("feddiff", 1, 0.60), "fold": 1}, {**run("feddiff", 2, 0.62), "fold": 1},
             {**run("fedavg", 1, 0.70), "fold": 1}, {**run("fedavg", 2, 0.91), "fold": 1}]
    (tmp_path / "f.json").write_text(json.dumps({"rows": folds}))
    by_seed = subprocess.run(command[:3] + ["folds", *command[4:6], "--mean-over-folds", "a:feddiff", "f:feddiff",
                                            "a:fedavg", "f:fedavg"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert by_seed.returncode == 0, by_seed.stderr[-2000:]
    averaged = {(r["algorithm"], r["seed"]): r for r in
                json.loads((tmp_path / "real_scene_folds.json").read_text())["rows"]}
    assert len(averaged) == 4 and averaged["feddiff", 1]["oa"] == pytest.approx(0.70)
    assert averaged["fedavg", 2]["folds"] == [0, 1] and averaged["fedavg", 2]["oa"] == pytest.approx(0.81)
    # feddiff − fedavg per seed: 0.70 − 0.70 and 0.72 − 0.81
    assert "feddiff is level with fedavg (-4.5 points" in (tmp_path / "real_scene_folds.md").read_text()
    # runs that say how many pixels they validated: the seed's validation OA is pooled over those pixels
    sized = [{**run("feddiff", seed, 0.0), "val_oa_final": val, "val_pixels": pixels, "fold": fold}
             for seed in (1, 2) for fold, val, pixels in ((0, 0.90, 100), (1, 0.60, 300))]
    (tmp_path / "s.json").write_text(json.dumps({"rows": sized}))
    weighted = subprocess.run(command[:3] + ["sized", *command[4:6], "--mean-over-folds", "s:feddiff"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert weighted.returncode == 0, weighted.stderr[-2000:]
    pooled_val = json.loads((tmp_path / "real_scene_sized.json").read_text())["rows"]
    assert [r["val_oa_final"] for r in pooled_val] == [pytest.approx(0.675)] * 2  # not the folds' mean 0.75
    assert [r["val_pixels"] for r in pooled_val] == [400, 400]
    assert "pooled over the folds' pixels" in (tmp_path / "real_scene_sized.md").read_text()
    assert "pooled over" not in (tmp_path / "real_scene_folds.md").read_text()
    uneven = subprocess.run(command[:3] + ["uneven", *command[4:6], "--mean-over-folds", "a:feddiff", "f:feddiff",
                                           "a:fedavg"], env=env, capture_output=True, text=True, timeout=120)
    assert uneven.returncode != 0 and "cover different folds" in uneven.stderr
    # runs measured on two CPU models: the table says so (outside strict mode they are not clean pairs)
    for name, rows, cpu in (("x", first, "Intel(R) Xeon(R) Processor"), ("e", first, "AMD EPYC")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"machine": f"{cpu}, 2 cores, torch", "rows": rows}))
    mixed = subprocess.run(command[:3] + ["mixed", *command[4:6], "x:feddiff", "e:fedavg"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert mixed.returncode == 0, mixed.stderr[-2000:]
    note = "**Runs from 2 CPU kinds** (AMD EPYC: fedavg; Intel(R) Xeon(R) Processor: feddiff)"
    assert note in (tmp_path / "real_scene_mixed.md").read_text() and note in mixed.stdout
    same = subprocess.run(command[:3] + ["same", *command[4:6], "x:feddiff", "x:fedavg"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and "CPU kinds" not in (tmp_path / "real_scene_same.md").read_text()
    assert "CPU kinds" not in (tmp_path / "real_scene_pooled.md").read_text()  # files that name no machine
    some = subprocess.run(command[:3] + ["some", *command[4:6], "--seeds", "1,3", *command[6:]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert some.returncode == 0, some.stderr[-2000:]
    assert sorted({r["seed"] for r in json.loads((tmp_path / "real_scene_some.json").read_text())["rows"]}) == [1, 3]
    # a second look judged at 99%: a wider interval, named as such
    strict = subprocess.run(command[:3] + ["strict", *command[4:6], "--confidence", "0.99", *command[6:]], env=env,
                            capture_output=True, text=True, timeout=120)
    assert strict.returncode == 0, strict.stderr[-2000:]
    wide, narrow = ((tmp_path / f"real_scene_{n}.md").read_text() for n in ("strict", "pooled"))
    assert "99% interval" in wide and "95% interval" not in wide and "95% interval" in narrow
    def low(text, level):  # the lower end of feddiff − fedavg's interval (+10.8 points in both)
        return float(re.search(r"fedavg \(\+10\.8 points, " + level + r"% interval ([-+][\d.]+) … ", text).group(1))

    assert low(wide, "99") < low(narrow, "95") < 10.8
    bad = subprocess.run(command[:3] + ["bad", *command[4:6], "--confidence", "95", *command[6:]], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--confidence 95.0: expected a level between 0.5 and 1" in bad.stderr
    missing = subprocess.run(command[:-1] + ["b:fedcmi"], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "b.json has no run of 'fedcmi'" in missing.stderr
    # a seed run again in a later source replaces the earlier run
    (tmp_path / "c.json").write_text(json.dumps({"rows": [run("feddiff", 2, 0.50)]}))
    again = subprocess.run(command[:3] + ["again", *command[4:6], "a:feddiff", "c:feddiff"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads((tmp_path / "real_scene_again.json").read_text())["rows"]
    assert sorted((r["seed"], r["oa"], r["source"]) for r in rerun) == [(1, 0.80, "a"), (2, 0.50, "c")]


def test_the_classical_reference_chooses_on_validation_and_scores_test_once(tmp_path, monkeypatch):
    """The SVM reference on the tiny scene's real patch sets: C and γ are the validation argmax of the
    grid, and the test split is scored by the chosen model only."""
    from fedrs.datasets import NpzDataset
    from fedrs.pipelines.patches.nodes import build_patch_sets, fit_normalisation, split_training_pixels
    from fedrs.scene.assemble import assemble_scene
    from fedrs.scene.synthetic import generate_synthetic_scene
    from tests.conftest import TINY_SCENE

    sys.path.insert(0, str(REPO / "bench"))
    monkeypatch.setenv("FEDRS_BENCH_RESULTS", str(tmp_path))
    import classical_reference

    raw = generate_synthetic_scene({**TINY_SCENE, "train_per_class": 12})
    scene = assemble_scene(raw["hsi"], raw["lidar"], raw["train_labels"], raw["test_labels"], {})
    split, _ = split_training_pixels(scene, {"patch_size": 5}, {"seed": 1})
    sets = build_patch_sets(scene, split, fit_normalisation(scene, split, {}), {"patch_size": 5})
    for name, patches in zip(("train", "validation", "test"), sets, strict=True):
        NpzDataset(str(tmp_path / f"{name}_patches.npz")).save(patches)
    fits = []
    original = classical_reference.SVC.fit
    monkeypatch.setattr(classical_reference.SVC, "fit", lambda self, x, y: fits.append(len(x)) or original(self, x, y))
    row = classical_reference.fit_and_score(tmp_path)
    grid = len(classical_reference.GRID["C"]) * len(classical_reference.GRID["gamma_scale"])
    assert len(fits) == grid and set(fits) == {len(sets[0]["labels"])}  # trained on training pixels only
    assert row["C"] in classical_reference.GRID["C"] and 0 < row["val_oa"] <= 1 and 0 < row["oa"] <= 1
    assert row["validation_pixels"] == len(sets[1]["labels"])
    # the chosen setting is the grid's best on validation pixels (first of a tie)
    x = {n: classical_reference.features(p) for n, p in zip(("train", "validation"), sets[:2], strict=True)}
    mean, std = x["train"].mean(axis=0), x["train"].std(axis=0) + 1e-9
    x = {n: (v - mean) / std for n, v in x.items()}
    best = max((float((classical_reference.SVC(C=c, gamma=g / x["train"].shape[1]).fit(x["train"], sets[0]["labels"])
                       .predict(x["validation"]) == sets[1]["labels"]).mean()), -i)
               for i, (c, g) in enumerate((c, g) for c in classical_reference.GRID["C"]
                                          for g in classical_reference.GRID["gamma_scale"]))
    assert row["val_oa"] == best[0]


def test_the_real_scene_table_pairs_cross_validation_folds_by_seed_and_fold(monkeypatch, tmp_path):
    """Under --folds every (seed, fold) is one run: the table lists them and pairs the algorithms
    run by run; a fold that only one algorithm ran stays out of the pairing."""
    sys.path.insert(0, str(REPO / "bench"))
    monkeypatch.setenv("FEDRS_BENCH_RESULTS", str(tmp_path))
    import real_scene_results

    def row(algorithm, fold, oa):
        return {"algorithm": algorithm, "seed": 1, "fold": fold, "oa": oa, "aa": oa, "kappa": oa, "val_oa_final": oa,
                "mb_sent": 1.0, "mb_dense": 1.0, "training_seconds": 1.0}

    rows = [row("feddiff", f, 0.8 + 0.01 * f) for f in range(3)] + [row("fedavg", f, 0.7) for f in range(4)]
    lines = real_scene_results.summary(rows, "tiny")
    table = "\n".join(lines)
    assert "| feddiff | 1/f0, 1/f1, 1/f2 |" in table and "1/f3" in table
    assert "feddiff is better than fedavg (+11.0 points" in table and "3 runs)" in table and "optimistic" in table
    # a setting is chosen on the validation comparison, which the table gives before the test one
    assert table.index("Validation OA (what a setting is chosen on), paired") < table.index("Test OA, paired")
    assert table.count("feddiff is better than fedavg") == 2
    assert real_scene_results.key(rows[0]) != real_scene_results.key(rows[1])


def test_the_diffusion_recipe_bench_probes_each_variant_against_raw_inputs(tmp_path):
    """Two recipes (ε-prediction on the bands, x0-prediction on a 3-component band projection) on a
    tiny patch set: every variant gets its features probed (middle block and a full-resolution decoder
    block, trained and untrained), the projection its own raw probe."""
    import numpy as np

    from fedrs.datasets import NpzDataset

    rng = np.random.default_rng(0)
    for name, n in (("train", 48), ("validation", 24)):
        labels = rng.integers(0, 3, n)
        hsi = rng.normal(size=(n, 6, 5, 5)).astype(np.float32) * 0.2 + labels[:, None, None, None] * 0.3
        NpzDataset(str(tmp_path / f"data/04_feature/tiny/{name}_patches.npz")).save(
            {"hsi": hsi, "labels": labels, "num_classes": 3})
    env = {**os.environ, "FEDRS_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "diffusion_variants.py"), "--project", str(tmp_path),
                           "--scene", "tiny", "--epochs", "1", "--timesteps", "5", "--variants", "eps", "pca3-x0",
                           "--layers", "middle,decoder5", "--untrained"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "diffusion_variants_tiny.json").read_text())["rows"]
    inputs = {(r["variant"], r["input"]) for r in rows}
    assert {("eps", "diffusion t=5, pooled"), ("pca3-x0", "diffusion t=5, flattened"),
            ("pca3-x0", "PCA-3 bands, pooled (raw)"), ("raw centre pixel", "raw")} <= inputs
    assert all(0.0 <= r["val_oa"] <= 1.0 for r in rows)
    assert next(r for r in rows if r["variant"] == "pca3-x0" and r["input"].startswith("PCA"))["dims"] == 3
    # the last decoder block is at the input's resolution with C = 32 channels: its centre reading is one
    # pixel's 32 values, its flattened reading every position's; the untrained U-Net is probed the same way
    decoder = {r["input"]: r["dims"] for r in rows if r["variant"] == "eps" and "decoder5" in r["input"]}
    assert decoder == {"diffusion t=5, decoder5 pooled": 32, "diffusion t=5, decoder5 flattened": 32 * 64,
                       "diffusion t=5, decoder5 centre": 32}
    assert ("eps untrained", "diffusion t=5, decoder5 centre") in inputs


def test_the_gpu_bench_measures_each_models_local_update():
    """bench/bench_gpu.py on the CPU path (its CUDA rows need a GPU): the algorithms' own client
    update at Houston size, a finite loss and a rate."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_gpu

    for name in ("FedDiff classifier (both branches)", "DDPM HSI, C = 32 (default)"):
        row = bench_gpu.measure(name, "cpu", "fp32", samples=16, epochs=1)
        assert row["samples_per_s"] > 0 and math.isfinite(row["train_loss"]) and row["gpu_peak_mb"] is None


def test_split_distances_put_strips_beside_their_roi_and_whole_rois_away_from_their_class():
    """bench/split_distances.py on a hand-made class of two ROIs 20 pixels apart: a strip's pixels sit
    next to the training strips of its own ROI, a held-out whole ROI 21 pixels or more from the other,
    and the test pixel between them 10 or 11 pixels from whichever ROI trained."""
    sys.path.insert(0, str(REPO / "bench"))
    from split_distances import distances_to_own_class, split_distances

    train = np.zeros((5, 40), np.int64)
    test = np.zeros_like(train)
    train[0:3, 0:10] = 1
    train[0:3, 30:32] = 1
    test[1, 20] = 1
    assert distances_to_own_class(train, test).tolist() == [10.0]
    assert distances_to_own_class(np.zeros_like(train), test).size == 0  # a class nobody trained on is left out
    strips = split_distances(train, test, "strips", [1, 2, 3], [0, 1], validation_fraction=0.5)
    rois = split_distances(train, test, "rois", [1, 2, 3], [0, 1], validation_fraction=0.5)
    assert strips["validation_within_3"] >= 0.5 and rois["validation_within_3"] == 0.0
    assert rois["validation_median"] > 20 and rois["test_median"] == pytest.approx(10.5)


def test_the_temperature_check_scores_each_fold_at_the_other_folds_temperature(tmp_path):
    """bench/temperature_check.py: with curves whose minimum lies at a known T per fold, the held-out
    loss of a fold is its curve at the geometric mean of the other folds' T — read, not refitted."""
    grid = np.geomspace(0.05, 20, 61)

    def run(seed, fold, temperature):
        curve = (np.log(grid) - math.log(temperature)) ** 2 + 1.0  # lowest (1.0) at ``temperature``
        return {"algorithm": "feddiff", "seed": seed, "fold": fold, "temperature": temperature,
                "temperature_grid": grid.tolist(), "val_loss_by_temperature": curve.tolist(),
                "test_loss": 1.0, "test_ece": 0.05, "loss_before_temperature": 2.0, "ece_before_temperature": 0.2}

    rows = [run(1, 0, 2.0), run(1, 1, 8.0), run(2, 0, 3.0), run(2, 1, 3.0), run(2, 2, 3.0)]
    (tmp_path / "t.json").write_text(json.dumps({"rows": rows}))
    env = {**os.environ, "FEDRS_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "temperature_check.py"), "--name", "check", "t"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    per_seed = json.loads((tmp_path / "check.json").read_text())["per_seed"]
    # seed 1: fold 0 scored at T = 8, fold 1 at T = 2: both log(4)² above their minimum
    assert per_seed["1"]["held_out"] == pytest.approx(1.0 + math.log(4) ** 2, rel=1e-3)
    # (between grid points the curve is read linearly in log T: within (0.1 / 2)² of the parabola)
    assert per_seed["1"]["own"] == pytest.approx(1.0, abs=3e-3)
    assert per_seed["1"]["at_1"] == pytest.approx(1.0 + (math.log(2) ** 2 + math.log(8) ** 2) / 2, abs=3e-3)
    assert per_seed["2"]["held_out"] == pytest.approx(per_seed["2"]["own"], abs=1e-9)  # every fold agrees on T
    assert "ECE" in done.stdout and "held out" in done.stdout
