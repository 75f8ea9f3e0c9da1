"""The comparison report: one table of every algorithm with results, the single-modality ablations,
and the page that shows them with the figures — as Markdown (figures beside it) and as a single
self-contained HTML file (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedrs.plots import cumulative_mb_sent

TABLE_COLUMNS = {"algorithm": "algorithm", "modalities": "modalities", "val_oa": "validation OA", "oa": "test OA",
                 "aa": "AA", "kappa": "κ",
                 "per_class_spread": "per-class spread", "rounds": "rounds", "mb_sent": "MB sent",
                 "mb_dense": "MB dense", "compression": "× fewer bytes", "wall_seconds": "wall s",
                 "peak_rss_mb": "peak MiB", "precision": "precision", "clients_lost": "clients lost",
                 "dp_epsilon": "DP ε", "secagg_seconds": "SecAgg s/round",
                 "dp_unit": "DP unit", "dp_not_covered": "not covered by ε",
                 "dp_record_epsilon": "record DP ε", "dp_record_unit": "record DP unit",
                 "dp_record_not_covered": "not covered by record ε",
                 "oa_before_calibration": "val. OA before calibration", "noise": "noise"}
# columns shown only when some run has them: DP ε (a private run, client- or record-level), SecAgg's time (a
# secure run), the last round's validation OA before classifier calibration (a calibrated run), a run's
# deterministic (test) noise
OPTIONAL_COLUMNS = ("dp_epsilon", "dp_unit", "dp_not_covered", "dp_record_epsilon", "dp_record_unit",
                    "dp_record_not_covered", "secagg_seconds", "oa_before_calibration", "noise")


def table_columns(table: pd.DataFrame) -> dict[str, str]:
    """The comparison's columns; the optional ones only when some run has a value."""
    return {k: v for k, v in TABLE_COLUMNS.items()
            if k not in OPTIONAL_COLUMNS or (k in table and table[k].notna().any())}


def ordered(names: list[str], preferred: list[str]) -> list[str]:
    """``preferred`` first (those present), then the rest alphabetically."""
    return [n for n in preferred if n in names] + sorted(n for n in names if n not in preferred)


def lost_note(run: dict[str, Any]) -> str:
    """``–`` for a run that kept every client; else what it lost (failed, dropped, rejected)."""
    parts = [f"{run.get(key, 0)} {label}" for key, label in (("clients_failed", "failed"),
                                                               ("clients_dropped", "dropped"),
                                                               ("updates_rejected", "rejected")) if run.get(key)]
    return "⚠ " + ", ".join(parts) if parts else "–"


def comparison_table(metrics: dict[str, dict[str, Any]], order: list[str]) -> pd.DataFrame:
    """One row per algorithm from its metrics file alone: scores, per-class accuracy, traffic over
    every stage, wall time, peak memory, the precision it ran in and the clients it lost."""
    rows = []
    for name in ordered(list(metrics), order):
        report = metrics[name]
        run = report.get("run") or {}
        sent, dense = run.get("bytes_sent", 0), run.get("bytes_dense", 0)
        row = {"algorithm": name, "modalities": "+".join(report.get("modalities", [])),
               "val_oa": (report.get("validation") or {}).get("oa", np.nan),
               "oa": report["oa"], "aa": report["aa"], "kappa": report["kappa"],
               "per_class_spread": report.get("per_class_spread", np.nan),
               "rounds": run.get("num_rounds", 0), "mb_sent": sent / 1e6, "mb_dense": dense / 1e6,
               "compression": dense / sent if sent else np.nan,
               "wall_seconds": run.get("wall_seconds", np.nan), "peak_rss_mb": run.get("peak_rss_mb", np.nan),
               "precision": (run.get("compute") or {}).get("precision", "–"), "clients_lost": lost_note(run),
               "loss_growing_rounds": run.get("loss_growing_rounds", 0),
               "val_loss_growing_rounds": run.get("val_loss_growing_rounds", 0),
               "val_loss_over_growth": run.get("val_loss_over_growth"),
               "dp_epsilon": run.get("dp_epsilon", np.nan), "dp_unit": run.get("dp_unit"),
               "dp_not_covered": run.get("dp_not_covered"),
               **{f"dp_record_{k}": run.get(f"dp_record_{k}", np.nan if k == "epsilon" else None)
                  for k in ("epsilon", "unit", "not_covered")},
               "secagg_seconds": run.get("secagg_seconds_per_round", np.nan),
               "oa_before_calibration": run.get("oa_before_calibration", np.nan),
               "noise": run.get("noise")}
        row.update({f"class: {k}": v for k, v in report.get("per_class", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def run_rounds(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each algorithm's per-round record, as its metrics file keeps it (a history-shaped dict)."""
    return {name: {"algorithm": name, "rounds": (report.get("run") or {}).get("rounds") or []}
            for name, report in metrics.items()}


def round_tables(histories: dict[str, dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Per federated algorithm: round, train loss, validation OA and cumulative MB sent (for DVC plots)."""
    tables = {}
    for name, history in histories.items():
        rounds = [r for r in history.get("rounds") or [] if r.get("val_oa") is not None]
        if rounds:
            tables[name] = pd.DataFrame({"round": [r["round"] for r in rounds],
                                         "train_loss": [r.get("train_loss", np.nan) for r in rounds],
                                         "val_oa": [r["val_oa"] for r in rounds],
                                         "mb_cumulative": cumulative_mb_sent(rounds)})
    return tables


def warnings_of(table: pd.DataFrame) -> list[str]:
    """Lines the report shows above the table: runs that lost clients or whose loss kept growing."""
    lines = []
    for _, row in table.iterrows():
        if row["clients_lost"] != "–":
            lines.append(f"**{row['algorithm']}** lost clients during training ({row['clients_lost'][2:]}): "
                         "its scores come from fewer updates than configured.")
        if row.get("loss_growing_rounds", 0):
            span = row.get("val_loss_over_growth")
            held_out = ("" if not isinstance(span, list | tuple) else
                        f" (the global model's validation loss over them: {span[0]:.3f} → {span[1]:.3f})")
            lines.append(f"**{row['algorithm']}**: the training loss grew in each of its last "
                         f"{int(row['loss_growing_rounds'])} rounds{held_out} — a diverging run until shown "
                         "otherwise.")
        if row.get("val_loss_growing_rounds", 0):
            lines.append(f"**{row['algorithm']}**: the global model's validation loss grew over its last "
                         f"{int(row['val_loss_growing_rounds'])} scored rounds — overfitting or divergence.")
    return lines


def single_modality_rows(metrics: dict[str, dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Test OA of every model with both modalities and with one (zero-filled, infiltrated, or a
    model trained on one modality)."""
    rows = []
    for name in ordered(list(metrics), order):
        report = metrics[name]
        modalities = report.get("modalities", [])
        label = "both" if len(modalities) > 1 else f"{'+'.join(modalities).upper()} only (trained)"
        rows.append({"algorithm": name, "inputs": label, "oa": report["oa"]})
        for variant, scores in (report.get("variants") or {}).items():
            modality, _, how = variant.partition("_")
            rows.append({"algorithm": name, "inputs": f"{modality.upper()} only, {how.replace('_', '-')}",
                         "oa": scores["oa"]})
        for variant, scores in (report.get("ablation") or {}).items():
            rows.append({"algorithm": name, "inputs": f"{variant.split('_')[0].upper()} only (trained)",
                         "oa": scores["oa"]})
    return rows


PRIVACY_NOTE = ("Sweeps of bench/privacy_curves.py on this scene (data/08_reporting/<scene>/privacy/): each "
                "algorithm without DP, with the DP mechanism but neither clipping nor noise, then one run per "
                "noise multiplier σ with C = the median unclipped norm; ε by Opacus' RDP accountant. <algo>: "
                "client-level DP (one organisation's update); <algo>_record: record-level DP-SGD (one training "
                "record; FedDiff: one pixel of a site, relayed outputs counted).")

# how the comparison's columns read; anything else: 4 decimals below 1.5, else one
FORMATS = {"mb_sent": "{:,.1f}", "mb_dense": "{:,.1f}", "compression": "{:.1f}×", "wall_seconds": "{:,.0f}",
           "peak_rss_mb": "{:,.0f}", "rounds": "{:.0f}", "dp_epsilon": "{:.2f}", "dp_record_epsilon": "{:.2f}",
           "secagg_seconds": "{:.2f}", "epsilon": "{:.2f}"}


def _format(value: Any, spec: str | None = None) -> str:
    if isinstance(value, float | np.floating | int | np.integer) and not isinstance(value, bool):
        if np.isnan(value):
            return "–"
        if np.isinf(value):
            return "∞"
        if spec:
            return spec.format(value)
        return f"{value:.4f}" if abs(value) < 1.5 else f"{value:,.1f}"
    return str(value)


def _cells(row: pd.Series, columns: dict[str, str]) -> list[str]:
    return [_format(row[c], FORMATS.get(c)) for c in columns]


def privacy_frame(sweeps: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per run of every DP sweep (``bench/privacy_curves.py``): setting, ε, scores, and how
    many rounds aggregated (a run wrecked by noise stops aggregating)."""
    rows = [{"algorithm": name, "setting": r["setting"],
             "epsilon": np.inf if r.get("epsilon") is None else r["epsilon"], "oa": r["oa"], "aa": r["aa"],
             "kappa": r["kappa"], "rounds_aggregated": r.get("rounds_aggregated", "–")}
            for name, sweep in sorted(sweeps.items()) for r in sweep["rows"]]
    return pd.DataFrame(rows, columns=list(PRIVACY_COLUMNS))


PRIVACY_COLUMNS = {"algorithm": "algorithm", "setting": "setting", "epsilon": "ε", "oa": "OA", "aa": "AA",
                   "kappa": "κ", "rounds_aggregated": "rounds aggregated"}


def markdown_table(frame: pd.DataFrame, columns: dict[str, str] | None = None) -> str:
    columns = columns or {c: c for c in frame.columns}
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(row, columns)) + " |" for _, row in frame.iterrows()]
    return "\n".join(lines)


def _per_class(frame: pd.DataFrame) -> pd.DataFrame:
    classes = [c for c in frame.columns if c.startswith("class: ")]
    return frame[["algorithm", *classes]].rename(columns={c: c.removeprefix("class: ") for c in classes})


def _ablation(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame.pivot_table(index="algorithm", columns="inputs", values="oa", sort=False).reset_index()


def render_markdown(title: str, context: dict[str, str], table: pd.DataFrame, ablation: list[dict[str, Any]],
                    figures: dict[str, str], privacy: pd.DataFrame | None = None) -> str:
    """The report as Markdown; ``figures`` maps a caption to the figure's path relative to the report."""
    warnings = warnings_of(table)
    parts = [f"# {title}", "", *(f"- **{k}**: {v}" for k, v in context.items()), "",
             "## Comparison", "", *(f"> ⚠ {w}" for w in warnings), *([""] if warnings else []),
             markdown_table(table, table_columns(table)), "",
             "## Per-class accuracy", "", markdown_table(_per_class(table)), ""]
    if ablation:
        parts += ["## Single-modality ablations (test OA)", "", markdown_table(_ablation(ablation)), ""]
    if privacy is not None and len(privacy):
        parts += ["## Differential privacy: accuracy against ε", "", PRIVACY_NOTE, "",
                  markdown_table(privacy, PRIVACY_COLUMNS), ""]
    parts += ["## Figures", ""]
    for caption, path in figures.items():
        parts += [f"### {caption}", "", f"![{caption}]({path})", ""]
    return "\n".join(parts)


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _html_table(frame: pd.DataFrame, columns: dict[str, str] | None = None) -> str:
    columns = columns or {c: c for c in frame.columns}
    head = "".join(f"<th>{html.escape(v)}</th>" for v in columns.values())
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _cells(row, columns)) + "</tr>"
                   for _, row in frame.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, context: dict[str, str], table: pd.DataFrame, ablation: list[dict[str, Any]],
                figures: dict[str, bytes], privacy: pd.DataFrame | None = None) -> str:
    """One HTML file with nothing external: the PNG figures are embedded as data URIs."""
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}"
             "td:first-child{text-align:left}img{max-width:100%}.warn{color:#a40}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1><ul>"]
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in context.items()]
    parts += ["</ul><h2>Comparison</h2>",
              *(f"<p class='warn'>⚠ {html.escape(w).replace('**', '')}</p>" for w in warnings_of(table)),
              _html_table(table, table_columns(table)),
              "<h2>Per-class accuracy</h2>", _html_table(_per_class(table))]
    if ablation:
        parts += ["<h2>Single-modality ablations (test OA)</h2>", _html_table(_ablation(ablation))]
    if privacy is not None and len(privacy):
        parts += ["<h2>Differential privacy: accuracy against ε</h2>", f"<p>{html.escape(PRIVACY_NOTE)}</p>",
                  _html_table(privacy, PRIVACY_COLUMNS)]
    parts.append("<h2>Figures</h2>")
    for caption, png in figures.items():
        data = base64.b64encode(png).decode()
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
