"""Report nodes: gather what every evaluated algorithm wrote, build the table, figures and pages."""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from fedrs.errors import InputError
from fedrs.plots import (
    comparison_curves_figure,
    confusion_grid_figure,
    maps_grid_figure,
    modality_ablation_figure,
    privacy_curve_figure,
)
from fedrs.report import (
    comparison_table,
    figure_png,
    ordered,
    privacy_frame,
    render_html,
    render_markdown,
    round_tables,
    run_rounds,
    single_modality_rows,
)

FIGURES = {"curves": "Validation OA per round and against cumulative bytes sent",
           "maps": "Classification maps beside the ground truth",
           "confusion": "Confusion matrices (row-normalised)",
           "modalities": "Single-modality ablations",
           "privacy": "Test OA against the privacy budget ε (client- and record-level DP sweeps)"}


def _loaded(parts: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    return {key.strip("/"): load() for key, load in parts.items()}


def build_report(metrics_parts: dict[str, Callable], prediction_parts: dict[str, Callable],
                 privacy_parts: dict[str, Callable], scene: dict[str, Any], params: dict[str, Any],
                 compute: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, Figure], str, str]:
    """Everything in ``data/08_reporting/<scene>/*/metrics.json`` compared: the table (CSV),
    per-round curves (CSV), the figures, the Markdown page and the self-contained HTML.

    The metrics files (kept in git) carry each run's summary, so a run of one algorithm rebuilds
    the report with every other algorithm's rows intact; only the maps figure needs the (DVC-kept)
    predictions, and shows those present. DP sweeps (``data/08_reporting/<scene>/privacy/<algo>.json``,
    written by ``bench/privacy_curves.py``) add a section and the OA-against-ε figure when present."""
    metrics = _loaded(metrics_parts)
    if not metrics:
        raise InputError("No evaluated algorithm found (no data/08_reporting/<scene>/<algorithm>/metrics.json); "
                         "expected at least one algorithm pipeline to have run before the report")
    order = list(params.get("order", []))
    names = ordered(list(metrics), order)
    histories = run_rounds(metrics)
    predictions = {k: v["prediction"] for k, v in _loaded(prediction_parts).items() if k in metrics}
    table = comparison_table(metrics, order)
    ablation = single_modality_rows(metrics, order)
    figures = {
        "curves": comparison_curves_figure({n: histories[n] for n in names}),
        "maps": maps_grid_figure({n: predictions[n] for n in names if n in predictions}, scene,
                                 {n: metrics[n]["oa"] for n in names}),
        "confusion": confusion_grid_figure({n: metrics[n] for n in names}, list(scene["class_names"])),
        "modalities": modality_ablation_figure(ablation),
    }
    sweeps = _loaded(privacy_parts)
    if sweeps:
        figures["privacy"] = privacy_curve_figure(sweeps)
    privacy = privacy_frame(sweeps) if sweeps else None
    title = params.get("title", "fedrs comparison")
    context = {"scene": str(params.get("scene_name", "")), "seed": str(compute.get("seed", "")),
               "algorithms": ", ".join(names),
               "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}"}
    markdown = render_markdown(title, context, table, ablation,
                               {FIGURES[k]: f"figures/{k}.png" for k in figures}, privacy)
    page = render_html(title, context, table, ablation,
                       {FIGURES[k]: figure_png(fig, int(params.get("dpi", 100))) for k, fig in figures.items()},
                       privacy)
    rounds = round_tables({n: histories[n] for n in names})
    return table, rounds, figures, markdown, page
