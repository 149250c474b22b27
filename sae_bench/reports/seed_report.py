"""`sae-bench report`: seed-style tables and figures for any selection of a recorded run (docs/design.md §3).

Reads the results database only (the dose figure's weight drift excepted: it loads the zoo models). Per family:
the SAE × model grid of CE recovered / EV / L0 with the verdict marked, one grid per variant side by side (filtered
and unfiltered, as Kissane et al. lay out their tables); heatmaps of CE recovered and EV; the dose-response curve
where dose cases ran; Kutsyk et al.'s density and similarity views for universality cases; the outlier breakdown
per model. Then every regression against its tolerance band. Writes report.md and report.html with the PNGs.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sae_bench.cases.registry import SHIPPED_CASES, Case, load_registry
from sae_bench.engine.backends import checkpoint_weights
from sae_bench.engine.drift import drift_between
from sae_bench.errors import BadInput
from sae_bench.reports import explanations
from sae_bench.reports import figures as report_figures
from sae_bench.results_store.database import FEATURES, RUN_FINISHED, ResultsDB, cases_matching
from sae_bench.sources.zoo.artifacts import read_manifest, verified_directory
from sae_bench.sources.zoo.recipes import FAMILIES

MARKS = {"ok": "✓", "regression": "✗", "improved": "↑", "unchecked": "·"}
GRID_METRICS = {"ce_loss_recovered": "CE rec.", "explained_variance": "EV", "l0": "L0"}
SEED_TABLE_COLUMNS = {
    "l0": "L0",
    "ce_loss_recovered": "CE rec.",
    "ce_clean": "clean CE",
    "ce_spliced": "SAE CE",
    "ce_delta": "CE Δ",
    "ce_zero_ablation": "zero-abl. CE",
    "explained_variance": "EV",
    "explained_variance_per_token": "EV/token",
    "mse": "MSE",
}
"""Kissane et al.'s table columns, in their order (SAE, model, L0, CE recovered, clean / SAE / Δ / zero-ablation
CE, EV, MSE), with the per-token EV their tables used beside the pooled one."""


def seed_table(records: list[dict]) -> pd.DataFrame:
    """One row per (SAE, model) in Kissane et al.'s layout; records hold SAE, model and the metric values. The zoo
    card and the report both build their SAE × model tables with this."""
    frame = pd.DataFrame(records)
    return frame[["SAE", "model", *SEED_TABLE_COLUMNS]].rename(columns=SEED_TABLE_COLUMNS)


@dataclass
class Section:
    """A titled part of the report: text, tables and figures (file names beside the report)."""

    title: str
    text: str = ""
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    pages: list[tuple[str, str]] = field(default_factory=list)
    """(caption, file name) of pages written beside the report (the feature pages), linked from it."""


def _cell(rows: pd.DataFrame) -> str:
    """'CE rec. / EV / L0' of one case, each with its verdict mark (— where not measured)."""
    parts = []
    for metric in GRID_METRICS:
        found = rows[rows.metric == metric]
        if found.empty or pd.isna(found.value.iloc[0]):
            parts.append("—")
            continue
        digits = ".1f" if metric == "l0" else ".3f"
        parts.append(f"{found.value.iloc[0]:{digits}}{MARKS.get(found.verdict.iloc[0], '')}")
    return " / ".join(parts)


def seed_grid(frame: pd.DataFrame, cases: list[Case], metric: str | None = None) -> pd.DataFrame:
    """Rows SAE, columns model: the cell text (or one metric's value) of each case."""
    records = []
    for case in cases:
        rows = frame[frame.case_id == case.id]
        if metric is None:
            value = _cell(rows)
        else:
            found = rows[rows.metric == metric].value
            value = float(found.iloc[0]) if len(found) and pd.notna(found.iloc[0]) else float("nan")
        records.append({"SAE": case.sae_name, "model": case.model_name, "value": value})
    table = pd.DataFrame(records).pivot(index="SAE", columns="model", values="value")
    order = list(dict.fromkeys(c.model_name for c in cases))
    table = table.reindex(columns=order, index=list(dict.fromkeys(c.sae_name for c in cases)))
    return table if metric is not None else table.fillna("not run")


def _sweep_figures(section: Section, run: int, family: str, cases: list[Case], frame: pd.DataFrame, out: Path) -> None:
    """Per sweep and id group (width / L0: the id without its layer), the per-layer curves of every SAE label on
    every model; the points as a table too."""

    for sweep in dict.fromkeys(c.sweep for c in cases):
        records = []
        for case in (c for c in cases if c.sweep == sweep and c.mask == "all" and not c.variant):
            label, _, sae_id = case.sae_name.partition("/")
            values = frame[frame.case_id == case.id].set_index("metric").value
            layer = int(re.search(r"layer_(\d+)", sae_id).group(1))
            group = re.sub(r"layer_\d+_?", "", sae_id) or "every layer"
            metrics = {m: values.get(m) for m in report_figures.RELEASE_METRICS}
            records.append({"group": group, "label": label, "model": case.model_name, "layer": layer} | metrics)
        points = pd.DataFrame(records)
        for group, part in points.groupby("group", sort=True) if len(points) else []:
            name = f"{family}-{sweep}-{group}.png".replace("/", "_").replace(" ", "-")
            title = f"{family} sweep {sweep}, {group}: per-layer transfer"
            report_figures.save(report_figures.release_curves(part, title, run), out / name)
            section.figures.append(name)
            section.tables.append((f"sweep {sweep}, {group}", part.drop(columns="group").set_index(["label", "model"])))


def _family_section(db: ResultsDB, run: int, family: str, cases: list[Case], frame: pd.DataFrame, out: Path) -> Section:
    section = Section(family)
    _sweep_figures(section, run, family, [c for c in cases if c.sweep], frame, out)
    plain = [c for c in cases if not c.paired and c.mask == "all" and not c.sweep]
    by_variant: dict[str, list[Case]] = {}
    for case in plain:
        by_variant.setdefault(case.variant or "as evaluated", []).append(case)
    for variant, members in by_variant.items():
        section.tables.append((f"SAE × model, {variant}: CE rec. / EV / L0", seed_grid(frame, members)))
    for variant, members in by_variant.items():
        records = []
        for case in members:
            values = frame[frame.case_id == case.id].set_index("metric").value
            records.append(
                {"SAE": case.sae_name, "model": case.model_name} | {m: values.get(m) for m in SEED_TABLE_COLUMNS}
            )
        section.tables.append((f"Kissane et al.'s layout, {variant}", seed_table(records).set_index("SAE")))
    if plain:
        first = next(iter(by_variant.values()))
        grids = {label: seed_grid(frame, first, metric) for metric, label in list(GRID_METRICS.items())[:2]}
        name = f"{family}-heatmap.png"
        report_figures.save(report_figures.heatmaps(grids, family, run), out / name)
        section.figures.append(name)
    dose = _dose_points(family, plain, frame)
    if dose is not None:
        name = f"{family}-dose.png"
        figure = report_figures.dose_response(dose, f"{family}/base-sae@{{{', '.join(dose.model)}}}", run)
        report_figures.save(figure, out / name)
        section.figures.append(name)
        section.tables.append(("dose series (base SAE)", dose.set_index("model")))
    for case in (c for c in cases if c.paired and "universality" in c.groups):
        vectors = db.vectors(run, case.id)
        if "density_base" in vectors:
            name = f"{case.id.replace('/', '_').replace('@', '-')}-features.png"
            report_figures.save(report_figures.universality(vectors, case.id, run), out / name)
            section.figures.append(name)
    shares = _outlier_shares(frame, plain)
    if shares is not None:
        name = f"{family}-outliers.png"
        report_figures.save(report_figures.outlier_breakdown(shares, family, run), out / name)
        section.figures.append(name)
    _explanations(db, section, run, family, cases, frame, out)
    return section


def _explanations(
    db: ResultsDB, section: Section, run: int, family: str, cases: list[Case], frame: pd.DataFrame, out: Path
) -> None:
    """A run recorded with --explain: the family's token-class figure and a page per transfer case whose SAE's
    features were compared with its own model."""
    classed = [c for c in cases if not c.paired and not c.variant and not c.sweep]
    contributions = explanations.class_contributions(frame, classed)
    if contributions is not None:
        name = f"{family}-token-classes.png"
        report_figures.save(report_figures.token_classes(contributions, family, run), out / name)
        section.figures.append(name)
    ids = {c.id for c in cases}
    for found in (e for e in db.explanations(run, FEATURES) if e.case_id in ids):
        name = explanations.page_name(found.case_id)
        (out / name).write_text(explanations.feature_page(found, run))
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in found.body["counts"].items() if k != "features")
        section.pages.append((f"{found.case_id}: features against {found.against} ({counts})", name))


def _dose_points(family: str, cases: list[Case], frame: pd.DataFrame) -> pd.DataFrame | None:
    """The base SAE on each model of a zoo family's dose series, with its fine-tune steps and weight drift."""
    recipe = FAMILIES.get(family)
    if recipe is None or not recipe.dose_series:
        return None
    by_model = {c.model_name: c for c in cases if c.sae_name == "base-sae" and not c.variant}
    models = [m for m in recipe.dose_series if m in by_model]
    if len(models) < 3:
        return None

    manifest = read_manifest()["models"]

    def weights(name: str):  # the checkpoint weight drift is defined on, read without building a model on it
        return checkpoint_weights(str(verified_directory(f"models/{family}/{name}")))

    base = list(weights("base"))
    rows = []
    for model in models:
        values = frame[frame.case_id == by_model[model].id].set_index("metric").value
        drift = 0.0 if model == "base" else drift_between(base, weights(model)).overall
        steps = 0 if manifest[f"{family}/{model}"]["parent"] is None else manifest[f"{family}/{model}"]["step"]
        rows.append(
            {
                "model": model,
                "steps": steps,
                "drift": drift,
                "ce_loss_recovered": values.get("ce_loss_recovered"),
                "explained_variance": values.get("explained_variance"),
            }
        )
    return pd.DataFrame(rows)


def _outlier_shares(frame: pd.DataFrame, cases: list[Case]) -> pd.DataFrame | None:
    """The outlier fraction and shares per model, from the first case of each model that measured them."""
    rows, seen = {}, set()
    for case in cases:
        values = frame[frame.case_id == case.id].set_index("metric").value
        if case.model_name not in seen and pd.notna(values.get("outlier_fraction")):
            seen.add(case.model_name)
            rows[f"{case.model_name}\n({case.sae_name}{'/' + case.variant if case.variant else ''})"] = values
    return pd.DataFrame(rows).T if rows else None


def build_report(db: ResultsDB, out: Path, run: str | int | None = "latest", cases: str | None = None) -> Path:
    """Write report.md, report.html and the figures into `out`; returns report.html."""
    run_id = db.resolve_run(run)
    frame = db.measurements(run_id)
    selected = cases_matching(frame.case_id, cases)
    if not selected:
        raise BadInput(f"run {run_id} recorded no case matching {cases!r}; it recorded {frame.case_id.nunique()} cases")
    frame = frame[frame.case_id.isin(selected)]
    if out.exists() and not out.is_dir():
        raise BadInput(
            f"--out {out} is a file; the report is a folder (report.html, report.md, the PNGs): name a folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    registry = load_registry(SHIPPED_CASES)
    known = [case for case in registry if case.id in set(selected)]  # in case-file order
    sections = [
        _family_section(db, run_id, family, [c for c in known if c.family == family], frame, out)
        for family in dict.fromkeys(c.family for c in known)
    ]
    regressed = frame[frame.verdict == "regression"]
    if not regressed.empty:
        report_figures.save(report_figures.regressions(regressed.head(12), run_id), out / "regressions.png")
        columns = ["case_id", "grp", "metric", "expected", "value", "threshold", "direction"]
        sections.append(
            Section("Regressions", tables=[("expected vs measured", regressed[columns])], figures=["regressions.png"])
        )
    info = db.runs().set_index("id").loc[run_id]
    status = db.run_status(run_id)
    partial = "" if status == RUN_FINISHED else f"**PARTIAL RUN: {status}; cases it did not reach are missing.** "
    header = partial + (
        f"Run {run_id} ({info.started} → {info.ended}, commit {info.git_commit or 'unknown'}, device "
        f"{info.device}): {len(selected)} cases, verdicts {frame.verdict.value_counts().to_dict()}. "
        "Marks: ✓ ok, ✗ regression, ↑ improved, · unchecked."
    )
    (out / "report.md").write_text(_markdown(header, sections))
    (out / "report.html").write_text(_html(header, sections))
    return out / "report.html"


def _markdown(header: str, sections: list[Section]) -> str:
    title = "# sae_bench report" + (" (partial run)" if header.startswith("**PARTIAL") else "")
    lines = [title, "", header, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for caption, table in section.tables:
            lines += [f"**{caption}**", "", table.to_markdown(floatfmt=".4g"), ""]
        lines += [f"![{name}]({name})" for name in section.figures] + [""]
        lines += [f"- [{caption}]({name})" for caption, name in section.pages] + ([""] if section.pages else [])
    return "\n".join(lines)


def _html(header: str, sections: list[Section]) -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>sae_bench report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
        "margin:0 1em 1em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}.row{display:flex;"
        "flex-wrap:wrap;align-items:flex-start}img{max-width:100%}</style>",
        "<h1>sae_bench report" + (" (partial run)" if header.startswith("**PARTIAL") else "") + "</h1>",
        f"<p>{html.escape(header)}</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2><div class='row'>")
        for caption, table in section.tables:
            parts.append(f"<div><b>{html.escape(caption)}</b>{table.to_html(float_format='{:.4g}'.format)}</div>")
        parts.append("</div>")
        parts += [f"<p><img src='{html.escape(name)}' alt='{html.escape(name)}'></p>" for name in section.figures]
        if section.pages:
            links = "".join(f"<li><a href='{html.escape(n)}'>{html.escape(c)}</a></li>" for c, n in section.pages)
            parts.append(f"<p>Features that broke, per transfer case:</p><ul>{links}</ul>")
    return "\n".join(parts) + "\n"
