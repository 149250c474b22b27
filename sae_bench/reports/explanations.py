"""The report's views of a run recorded with --explain: where each family's spliced loss goes by token class, and a
page per transfer case listing the features of its SAE that broke from the SAE's own model. Read from the results
database only (`sae_bench.suite.explanations` recorded them)."""

from __future__ import annotations

import html

import pandas as pd

from sae_bench.cases.registry import Case
from sae_bench.engine.definitions import BY_CLASS, CLASS_METRIC, TOKEN_CLASSES
from sae_bench.engine.feature_breaks import RANKINGS, SHIFT
from sae_bench.engine.feature_stats import MIN_FIRINGS
from sae_bench.results_store.database import Explanation

PAGE_BYTES = 200_000
"""A feature page's size cap: beyond it, each feature keeps its first window only, then the lowest rows go."""


def class_contributions(frame: pd.DataFrame, cases: list[Case]) -> pd.DataFrame | None:
    """Per case recorded with token classes: each class's share of the case's ΔCE in nats per prediction,
    ce_delta_by_class × predictions_by_class / Σ predictions (the classes add up to the case's ce_delta), and its
    own mean ΔCE per prediction. Columns panel (the model, and the mask where it is not all), SAE, class,
    contribution, per_prediction (NaN where the class has no prediction); None when no case has them."""
    records = []
    for case in cases:
        rows = frame[(frame.case_id == case.id) & frame.metric.str.contains(BY_CLASS, regex=False)]
        if rows.empty:
            continue
        table: dict[str, dict[str, float]] = {}
        for metric, value in zip(rows.metric, rows.value, strict=True):
            match = CLASS_METRIC.fullmatch(metric)
            table.setdefault(match["token_class"], {})[match["metric"].removesuffix(BY_CLASS)] = value
        total = sum(row.get("predictions") or 0 for row in table.values())
        panel = case.model_name if case.mask == "all" else f"{case.model_name} ({case.mask})"
        for token_class in TOKEN_CLASSES:
            row = table.get(token_class, {})
            delta, predictions = row.get("ce_delta"), row.get("predictions") or 0
            known = bool(predictions) and delta is not None and not pd.isna(delta)
            records.append({
                "panel": panel, "SAE": case.sae_name, "class": token_class,
                "contribution": delta * predictions / total if known else 0.0,
                "per_prediction": delta if known else float("nan"),
            })  # fmt: skip
    return pd.DataFrame(records) if records else None


def feature_page(explanation: Explanation, run: int) -> str:
    """One transfer case's feature page: the counts, then the features that moved most by each ranking, with where
    each fires most on both models. At most `PAGE_BYTES`."""
    for windows, rows in ((None, None), (1, None), (1, 10), (1, 5)):
        page = _page(explanation, run, windows, rows)
        if len(page.encode()) <= PAGE_BYTES:
            return page
    return page


def _page(explanation: Explanation, run: int, windows: int | None, rows: int | None) -> str:
    body = explanation.body
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in body["counts"].items())
    definitions = ", ".join(f"{name} v{version}" for name, version in sorted(explanation.definitions.items()))
    scaling = body.get("scaling") or {}
    median = (
        f" Latent scaling: median ν {scaling['median_nu']:.3g} over the {scaling['supported']} features firing on "
        f"{MIN_FIRINGS}+ positions of each model."
        if scaling.get("median_nu") is not None
        else ""
    )
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(explanation.case_id)}: features</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;vertical-align:top}td.c{font-family:monospace;"
        "white-space:pre-wrap;max-width:420px}</style>",
        f"<h1>{html.escape(explanation.case_id)}: the features that broke</h1>",
        f"<p>Run {run}, {html.escape(explanation.dtype)}. The SAE's features on this case's model (other) against "
        f"{html.escape(explanation.against)}, the same SAE on the model it was trained on (own): {counts} "
        f"(shifted: density changed {SHIFT:g}× or more).{html.escape(median)} Definitions: "
        f"{html.escape(definitions)}; ν = β other / β own, ranked among features firing on {MIN_FIRINGS}+ positions "
        "of each model. ⟦ ⟧ marks the activating token, ⏎ a newline.</p>",
    ]
    if windows or rows:
        parts.append(f"<p><b>Capped at {PAGE_BYTES // 1000} kB:</b> one window per feature"
                     + (f", the first {rows} features per ranking" if rows else "") + ".</p>")  # fmt: skip
    for by, ranking in RANKINGS.items():
        records = body["tables"][by][:rows]
        parts.append(f"<h2>By {html.escape(ranking)}</h2>")
        parts.append(_table(records, windows) if records else "<p>No feature qualifies.</p>")
    return "\n".join(parts) + "\n"


def _table(records: list[dict], windows: int | None) -> str:
    columns = list(records[0])
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in columns)
    lines = [f"<table><tr>{head}</tr>"]
    for record in records:
        cells = []
        for column in columns:
            value = record[column]
            if isinstance(value, str):
                shown = "\n".join(value.split("\n")[:windows])
                cells.append(f"<td class='c'>{html.escape(shown)}</td>")
            else:
                cells.append(f"<td>{'—' if value is None or value != value else f'{value:.4g}'}</td>")
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return "\n".join(lines) + "</table>"


def page_name(case_id: str) -> str:
    return f"features-{case_id.replace('/', '_').replace('@', '-')}.html"
