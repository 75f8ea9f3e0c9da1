import base64
import re

import numpy as np
import pandas as pd

from fedrs.plots import comparison_curves_figure
from fedrs.report import (
    comparison_table,
    figure_png,
    markdown_table,
    ordered,
    render_html,
    render_markdown,
    single_modality_rows,
)
from fedrs.results import run_summary


def _metrics(oa, modalities=("hsi", "lidar"), **extra):
    return {"oa": oa, "aa": oa - 0.01, "kappa": oa - 0.05, "validation": {"oa": oa + 0.02},
            "per_class_spread": 0.2, "modalities": list(modalities),
            "per_class": {"Grass": oa, "Trees": oa - 0.1}, "confusion": [[3, 1], [0, 4]], **extra}


def _round(n, up, up_dense):
    return {"round": n, "val_oa": 0.5 + n / 10, "bytes_up": up, "bytes_up_dense": up_dense,
            "bytes_down": 100, "bytes_down_dense": 100}


def test_table_sums_traffic_of_every_stage_and_orders_rows():
    diffusion = {"rounds": [], "stages": {"hsi": [_round(1, 1000, 1000)]}, "wall_seconds": 5.0, "peak_rss_mb": 1200.0}
    histories = {"fedavg": {"rounds": [_round(1, 400, 400), _round(2, 400, 400)], "wall_seconds": 10.0,
                            "peak_rss_mb": 900.0},
                 "feddiff": {"rounds": [_round(1, 50, 500)], "wall_seconds": 20.0, "peak_rss_mb": 1000.0,
                             "earlier_stages": [diffusion]},
                 "local": {"rounds": [], "wall_seconds": 3.0, "peak_rss_mb": 500.0}}
    metrics = {name: _metrics(oa, mods, run=run_summary(histories[name]))
               for name, oa, mods in (("fedavg", 0.8, ("hsi", "lidar")), ("feddiff", 0.9, ("hsi", "lidar")),
                                      ("local", 0.5, ("hsi",)))}
    table = comparison_table(metrics, order=["feddiff", "fedavg"])
    assert list(table["algorithm"]) == ["feddiff", "fedavg", "local"]
    fedavg, feddiff, local = (table.set_index("algorithm").loc[n] for n in ("fedavg", "feddiff", "local"))
    assert fedavg["mb_sent"] * 1e6 == 1000 and fedavg["compression"] == 1.0 and fedavg["rounds"] == 2
    # FedDiff: the classifier round and the diffusion stage's round, both directions
    assert feddiff["mb_sent"] * 1e6 == 50 + 100 + 1000 + 100 and feddiff["mb_dense"] * 1e6 == 500 + 100 + 1000 + 100
    assert feddiff["wall_seconds"] == 25.0 and feddiff["peak_rss_mb"] == 1200.0
    assert np.isnan(local["compression"]) and local["modalities"] == "hsi"
    assert feddiff["class: Trees"] == 0.8


def test_single_modality_rows_cover_variants_ablations_and_unimodal_models():
    metrics = {"fedcmi": _metrics(0.8, variants={"lidar_infiltrated": {"oa": 0.4}, "lidar_zero_filled": {"oa": 0.3}}),
               "centralized": _metrics(0.9, ablation={"hsi_only": {"oa": 0.6}}),
               "fedavg_hsi": _metrics(0.55, ("hsi",))}
    rows = single_modality_rows(metrics, [])
    got = {(r["algorithm"], r["inputs"]): r["oa"] for r in rows}
    assert got == {("centralized", "both"): 0.9, ("centralized", "HSI only (trained)"): 0.6,
                   ("fedavg_hsi", "HSI only (trained)"): 0.55, ("fedcmi", "both"): 0.8,
                   ("fedcmi", "LIDAR only, infiltrated"): 0.4, ("fedcmi", "LIDAR only, zero-filled"): 0.3}


def test_pages_hold_every_algorithm_and_embed_every_figure():
    metrics = {"a": _metrics(0.7), "b": _metrics(0.6, variants={"hsi_zero_filled": {"oa": 0.3}})}
    table = comparison_table(metrics, [])
    rows = single_modality_rows(metrics, [])
    fig = comparison_curves_figure({"a": {"rounds": [_round(1, 10, 20), _round(2, 10, 20)]}})
    png = figure_png(fig)
    page = render_html("t", {"scene": "s"}, table, rows, {"curves": png, "again": png})
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 2 and base64.b64decode(images[0]) == png and png.startswith(b"\x89PNG")
    assert "<td>a</td>" in page and "<td>b</td>" in page and "src='http" not in page
    md = render_markdown("t", {"scene": "s"}, table, rows, {"Curves": "figures/curves.png"})
    assert "![Curves](figures/curves.png)" in md and "| a | hsi+lidar | 0.7200 | 0.7000 |" in md
    assert "HSI only, zero-filled" in md


def test_ordered_and_markdown_table():
    assert ordered(["z", "b", "a", "feddiff"], ["feddiff", "missing", "a"]) == ["feddiff", "a", "b", "z"]
    text = markdown_table(pd.DataFrame([{"x": "n", "y": float("nan"), "z": 1234.5}]))
    assert text.splitlines()[2] == "| n | – | 1,234.5 |"


def test_runs_that_lost_clients_or_kept_raising_their_loss_are_marked():
    rounds = [{"round": 1, "train_loss": 1.0, "val_oa": 0.5, "failed": [{"client_id": 3}], "dropped": []},
              {"round": 2, "train_loss": 1.5, "val_oa": 0.5, "failed": [], "dropped": [{"client_id": 1}]},
              {"round": 3, "train_loss": 2.0, "val_oa": 0.5, "failed": [], "dropped": [], "loss_growing_rounds": 2}]
    run = run_summary({"rounds": rounds, "wall_seconds": 1.0, "peak_rss_mb": 1.0, "compute": {"precision": "bf16"}})
    assert (run["clients_failed"], run["clients_dropped"], run["lost_clients"]) == (1, 1, True)
    metrics = {"shaky": _metrics(0.6, run=run), "fine": _metrics(0.7, run=run_summary({"rounds": rounds[:1]}) | {
        "clients_failed": 0, "lost_clients": False})}
    table = comparison_table(metrics, [])
    shaky = table.set_index("algorithm").loc["shaky"]
    assert shaky["clients_lost"] == "⚠ 1 failed, 1 dropped" and shaky["precision"] == "bf16"
    assert table.set_index("algorithm").loc["fine"]["clients_lost"] == "–"
    md = render_markdown("t", {}, table, [], {})
    assert "**shaky** lost clients during training" in md and "**fine** lost" not in md
    assert "training loss grew in each of its last 2 rounds —" in md  # no validation loss: nothing to add
    # with the global model's validation loss: what it did over those rounds, and a warning of its own
    scored = [{**r, "val_loss": v} for r, v in zip(rounds, (0.9, 0.8, 1.2), strict=True)]
    scored[-1]["val_loss_growing_rounds"] = 3
    table = comparison_table({"creep": _metrics(0.6, run=run_summary({"rounds": scored}))}, [])
    md = render_markdown("t", {}, table, [], {})
    assert "(the global model's validation loss over them: 0.900 → 1.200)" in md
    assert "**creep**: the global model's validation loss grew over its last 3 scored rounds" in md


def test_a_private_runs_budget_reaches_the_table_and_mlflow():
    from fedrs.pipelines.evaluation.nodes import mlflow_metrics

    rounds = [{"round": 1, "train_loss": 1.0, "val_oa": 0.4, "dp_epsilon": 3.5},
              {"round": 2, "train_loss": 0.9, "val_oa": 0.5, "dp_epsilon": 5.25}]
    private = run_summary({"rounds": rounds})
    assert private["dp_epsilon"] == 5.25 and [r["dp_epsilon"] for r in private["rounds"]] == [3.5, 5.25]
    assert "dp_epsilon" not in run_summary({"rounds": [{"round": 1, "val_oa": 0.5}]})
    table = comparison_table({"dp": _metrics(0.5, run=private), "plain": _metrics(0.7, run=run_summary({}))}, [])
    cells = markdown_table(table, {"algorithm": "algorithm", "dp_epsilon": "DP ε"})
    assert "| dp | 5.25 |" in cells and "| plain | – |" in cells
    from fedrs.report import table_columns

    assert "dp_epsilon" in table_columns(table)  # shown when some run was private, else left out
    assert "dp_epsilon" not in table_columns(table[table["algorithm"] == "plain"])
    report = {**_metrics(0.5), "run": private}
    logged = mlflow_metrics(report, {"rounds": rounds})
    assert logged["dp_epsilon"] == {"value": 5.25, "step": 0}
    assert [p["value"] for p in logged["round.dp_epsilon"]] == [3.5, 5.25]


def test_a_record_private_runs_budget_and_unit_reach_the_table_and_mlflow():
    from fedrs.pipelines.evaluation.nodes import mlflow_metrics
    from fedrs.report import table_columns

    rounds = [{"round": 1, "val_oa": 0.4, "dp_record_epsilon": 2.0, "dp_record_unit": "training record"},
              {"round": 2, "val_oa": 0.5, "dp_record_epsilon": 3.0, "dp_record_unit": "training record"}]
    private = run_summary({"rounds": rounds})
    assert private["dp_record_epsilon"] == 3.0 and private["dp_record_unit"] == "training record"
    assert private["dp_record_not_covered"] == "–" and "dp_epsilon" not in private
    table = comparison_table({"dp": _metrics(0.5, run=private), "plain": _metrics(0.7, run=run_summary({}))}, [])
    cells = markdown_table(table, {"algorithm": "algorithm", "dp_record_epsilon": "record DP ε"})
    assert "| dp | 3.00 |" in cells and "| plain | – |" in cells
    shown = table_columns(table)
    assert {"dp_record_epsilon", "dp_record_unit"} <= set(shown) and "dp_epsilon" not in shown
    logged = mlflow_metrics({**_metrics(0.5), "run": private}, {"rounds": rounds})
    assert logged["dp_record_epsilon"] == {"value": 3.0, "step": 0}
    assert [p["value"] for p in logged["round.dp_record_epsilon"]] == [2.0, 3.0]


def test_secure_aggregations_cost_per_round_reaches_the_table_and_mlflow():
    from fedrs.pipelines.evaluation.nodes import mlflow_metrics
    from fedrs.report import table_columns

    rounds = [{"round": 1, "val_oa": 0.4, "secagg_sums": 3, "secagg_seconds": 1.5},
              {"round": 2, "val_oa": 0.5, "secagg_sums": 4, "secagg_seconds": 2.5}]
    secure = run_summary({"rounds": rounds})
    assert secure["secagg_seconds_per_round"] == 2.0 and [r["secagg_sums"] for r in secure["rounds"]] == [3, 4]
    table = comparison_table({"secure": _metrics(0.5, run=secure), "plain": _metrics(0.7, run=run_summary({}))}, [])
    assert "| secure | 2.00 |" in markdown_table(table, {"algorithm": "algorithm", "secagg_seconds": "SecAgg s/round"})
    assert "secagg_seconds" in table_columns(table) and "dp_epsilon" not in table_columns(table)
    assert "secagg_seconds" not in table_columns(table[table["algorithm"] == "plain"])
    logged = mlflow_metrics({**_metrics(0.5), "run": secure}, {"rounds": rounds})
    assert logged["secagg_seconds_per_round"] == {"value": 2.0, "step": 0}


def test_a_calibrated_runs_oa_before_calibration_reaches_the_table_and_mlflow():
    from fedrs.pipelines.evaluation.nodes import mlflow_metrics
    from fedrs.report import table_columns

    rounds = [{"round": 1, "val_oa": 0.4}, {"round": 2, "val_oa": 0.55, "val_oa_before_calibration": 0.5,
                                             "calibration_clients": 4}]
    calibrated = run_summary({"rounds": rounds})
    assert calibrated["oa_before_calibration"] == 0.5 and calibrated["rounds"][-1]["calibration_clients"] == 4
    table = comparison_table({"cal": _metrics(0.55, run=calibrated), "plain": _metrics(0.7, run=run_summary({}))}, [])
    assert "oa_before_calibration" in table_columns(table)
    assert "oa_before_calibration" not in table_columns(table[table["algorithm"] == "plain"])
    logged = mlflow_metrics({**_metrics(0.55), "run": calibrated}, {"rounds": rounds})
    assert logged["oa_before_calibration"] == {"value": 0.5, "step": 0}


def test_dp_sweeps_give_the_report_a_section_and_the_oa_against_epsilon_figure():
    from fedrs.plots import privacy_curve_figure
    from fedrs.report import PRIVACY_COLUMNS, privacy_frame

    sweep = {"rows": [{"setting": "no DP", "sigma": None, "epsilon": None, "oa": 0.8, "aa": 0.7, "kappa": 0.75,
                       "rounds_aggregated": "3/3"},
                      {"setting": "σ = 1", "sigma": 1.0, "epsilon": 31.1, "oa": 0.3, "aa": 0.2, "kappa": 0.25,
                       "rounds_aggregated": "3/3"},
                      {"setting": "σ = 4", "sigma": 4.0, "epsilon": 5.5, "oa": 0.05, "aa": 0.1, "kappa": 0.0,
                       "rounds_aggregated": "1/3"}]}
    frame = privacy_frame({"fedavg": sweep})
    assert list(frame["epsilon"])[0] == np.inf and list(frame["oa"]) == [0.8, 0.3, 0.05]
    table = markdown_table(frame, PRIVACY_COLUMNS)
    assert "| fedavg | no DP | ∞ | 0.8000 |" in table and "| fedavg | σ = 4 | 5.50 | 0.0500 |" in table
    md = render_markdown("t", {}, comparison_table({"a": _metrics(0.5)}, []), [], {}, frame)
    assert "## Differential privacy: accuracy against ε" in md and "1/3" in md
    assert "Differential privacy" not in render_markdown("t", {}, comparison_table({"a": _metrics(0.5)}, []), [], {})
    ax = privacy_curve_figure({"fedavg": sweep}).axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    assert list(line.get_xdata()) == [5.5, 31.1] and list(line.get_ydata()) == [0.05, 0.3]  # ε ascending
    assert any(ln.get_linestyle() == "--" and list(ln.get_ydata()) == [0.8, 0.8] for ln in ax.get_lines())


def test_a_runs_dp_unit_what_its_epsilon_misses_and_deterministic_noise_reach_the_table_and_mlflow():
    from fedrs.pipelines.evaluation.nodes import mlflow_metrics
    from fedrs.report import table_columns

    rounds = [{"round": 1, "val_oa": 0.4, "dp_epsilon": 3.5, "dp_unit": "site (its two organisations together)",
               "relayed_outputs": 4},
              {"round": 2, "val_oa": 0.5, "dp_epsilon": 5.25, "dp_unit": "site (its two organisations together)",
               "relayed_outputs": 4}]
    diffusion = {"algorithm": "feddiff_diffusion", "rounds": [], "stages": {"hsi": [{"round": 1}]}}
    private = run_summary({"rounds": rounds, "earlier_stages": [diffusion]})
    assert private["dp_unit"].startswith("site")
    assert private["dp_not_covered"] == "feddiff_diffusion (hsi), the relayed branch outputs"
    deterministic = {"round": 1, "val_oa": 0.5, "dp_epsilon": None, "noise": "deterministic — no privacy"}
    testing = run_summary({"rounds": [deterministic]})
    assert testing["noise"] == "deterministic — no privacy" and "dp_epsilon" not in testing
    table = comparison_table({"feddiff": _metrics(0.5, run=private), "test": _metrics(0.6, run=testing),
                              "plain": _metrics(0.7, run=run_summary({}))}, [])
    columns = table_columns(table)
    assert {"dp_unit", "dp_not_covered", "noise"} <= set(columns)
    cells = markdown_table(table, {"algorithm": "algorithm", "noise": "noise"})
    assert "| test | deterministic — no privacy |" in cells and "| plain | – |" in cells
    assert not {"dp_unit", "noise"} & set(table_columns(table[table["algorithm"] == "plain"]))
    assert mlflow_metrics({**_metrics(0.6), "run": testing}, {"rounds": []})["deterministic_noise"]["value"] == 1.0
