"""`sae-bench compare` and `sae-bench history`: how the recorded metrics moved between runs and across releases."""

from __future__ import annotations

import difflib

import pandas as pd

from sae_bench.errors import BadInput
from sae_bench.expectations.rules import MetricExpectation
from sae_bench.results_store.database import RUN_FINISHED, ResultsDB

VANISHED = "vanished"
"""The verdict of a case or metric the baseline measured and the run did not: a regression (docs/design.md §12)."""
REGRESSIONS = ("regression", VANISHED)
REDEFINED = "redefined"
"""The verdict of a metric the two runs measured under different definitions (shown with --allow-redefined)."""


def previous_run(db: ResultsDB, run: int) -> int:
    """The newest run before `run` that recorded measurements."""
    found = db.scalar("SELECT MAX(run) FROM measurements WHERE run < ?", (run,))
    if found is None:
        raise BadInput(f"no recorded run before run {run} to compare with; pass --baseline ID")
    return int(found)


def check_finished(db: ResultsDB, *runs: int) -> None:
    """Refuse runs that did not finish: their missing cases would read as vanished, or hide as unmeasured."""
    unfinished = [f"run {run} {status}" for run in runs if (status := db.run_status(run)) != RUN_FINISHED]
    if unfinished:
        raise BadInput(
            f"{'; '.join(unfinished)}: its measurements are partial. Compare finished runs, or pass --allow-partial "
            "to compare what it recorded (what it did not reach then counts as vanished)"
        )


class RedefinedMetrics(BadInput):
    """Two runs measured a metric under different definitions: their values are not comparable."""


class OtherDtype(BadInput):
    """Two runs measured a case with its models in different precisions: a precision check, not a regression run."""


def compare_runs(
    db: ResultsDB, baseline: int, run: int, *, allow_redefined: bool = False, allow_other_dtype: bool = False
) -> pd.DataFrame:
    """Every metric both runs measured for the same case whose value moved, with its tolerance and a verdict (the
    move judged against the baseline value with the expectation's tolerance and direction), and every case and
    metric of the baseline that the run did not measure, as `vanished` (a regression). Values measured under
    different definitions of their metric are refused (RedefinedMetrics) unless `allow_redefined`; then the
    `definition` column says both versions ("v1 → v2"). Cases whose models ran in different dtypes are refused
    (OtherDtype) unless `allow_other_dtype`; then they are judged like the others (a precision check) and the
    `dtype` column says both ("float32 → bfloat16")."""
    keys = ["case_id", "grp", "metric"]
    old = db.measurements(baseline)[keys + ["value", "threshold", "direction", "definition", "dtype"]]
    new = db.measurements(run)[keys + ["value", "definition", "dtype"]]
    both = old.merge(new, on=keys, suffixes=("_baseline", "_run"), how="left", indicator=True)
    vanished = both[both._merge == "left_only"]
    both = both[both._merge == "both"]
    redefined = both[both.definition_baseline != both.definition_run]
    if len(redefined) and not allow_redefined:
        raise RedefinedMetrics(
            f"run {run} measured {redefined.metric.nunique()} metric(s) under another definition than run {baseline} "
            f"({_versions(redefined)}): their values are not comparable. Compare runs of one suite version, or pass "
            "--allow-redefined to see them side by side anyway"
        )
    other_dtype = both[both.dtype_baseline != both.dtype_run]
    if len(other_dtype) and not allow_other_dtype:
        pairs = sorted({f"{r.dtype_baseline} → {r.dtype_run}" for r in other_dtype.itertuples()})
        raise OtherDtype(
            f"run {run} measured {other_dtype.case_id.nunique()} case(s) with their models in another dtype than run "
            f"{baseline} ({', '.join(pairs)}; e.g. {other_dtype.case_id.iloc[0]}): a precision check, not a "
            "regression run. Compare runs in one dtype, or pass --allow-other-dtype to judge them anyway"
        )
    both = both.assign(
        definition=_moves(both.definition_baseline, both.definition_run),
        dtype=[a if a == b else f"{a} → {b}" for a, b in zip(both.dtype_baseline, both.dtype_run, strict=True)],
    )
    vanished = vanished.assign(
        definition=vanished.definition_baseline.map(lambda v: f"v{int(v)}"), dtype=vanished.dtype_baseline
    )
    moved = both[
        ~((both.value_baseline == both.value_run) | (both.value_baseline.isna() & both.value_run.isna()))
        | (both.definition_baseline != both.definition_run)
    ]
    verdicts = []
    for row in moved.itertuples():
        if row.definition_baseline != row.definition_run:  # shown with --allow-redefined, never judged
            verdicts.append(REDEFINED)
            continue
        if pd.isna(row.threshold) or pd.isna(row.value_baseline):
            verdicts.append("moved (no tolerance)" if pd.isna(row.threshold) else "was undefined")
            continue
        expectation = MetricExpectation(row.value_baseline, row.direction, abs=row.threshold)
        verdicts.append(expectation.verdict(None if pd.isna(row.value_run) else row.value_run))
    table = pd.concat(
        [
            moved.assign(change=moved.value_run - moved.value_baseline, verdict=verdicts),
            vanished.assign(change=None, verdict=VANISHED),
        ]
    )
    columns = keys + ["value_baseline", "value_run", "change", "threshold", "direction", "definition", "dtype"]
    return table[[*columns, "verdict"]].reset_index(drop=True)


def _moves(old: pd.Series, new: pd.Series) -> list[str]:
    return [f"v{int(a)}" if a == b else f"v{int(a)} → v{int(b)}" for a, b in zip(old, new, strict=True)]


def _versions(rows: pd.DataFrame) -> str:
    pairs = rows.drop_duplicates("metric")
    return ", ".join(
        f"{r.metric} v{int(r.definition_baseline)} → v{int(r.definition_run)}" for r in pairs.head(5).itertuples()
    ) + (", …" if len(pairs) > 5 else "")


def history(db: ResultsDB, case_id: str, metric: str) -> pd.DataFrame:
    """The metric across runs, with the SAE fingerprint that marks a release."""
    rows = db.measurements(case_id=case_id, metric=metric)
    if rows.empty:
        raise BadInput(_unknown(db, case_id, metric))
    runs = db.runs()[["id", "started", "git_commit"]].rename(columns={"id": "run"})
    columns = ["run", "started", "git_commit", "value", "definition", "dtype", "verdict", "sae", "sae_fingerprint"]
    table = rows.merge(runs, on="run")[columns]
    return table.reset_index(drop=True)


def _unknown(db: ResultsDB, case_id: str, metric: str) -> str:
    """Why (case, metric) has no history, with what does exist."""
    cases = sorted(db.measurements().case_id.unique())
    if case_id not in cases:
        close = difflib.get_close_matches(case_id, cases, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"{len(cases)} cases are recorded (sae-bench report)"
        return f"no run recorded case {case_id!r} in {db.path}; {hint}"
    metrics = sorted(db.measurements(case_id=case_id).metric.unique())
    close = difflib.get_close_matches(metric, metrics, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"no run recorded metric {metric!r} for {case_id!r}; {hint}its metrics: {', '.join(metrics)}"


def history_figure(table: pd.DataFrame, case_id: str, metric: str):
    """The metric's trend over runs; a new SAE fingerprint (a release) is marked with a dashed line."""
    import matplotlib  # noqa: PLC0415 - only a history figure needs matplotlib; the history table loads without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after the Agg backend is chosen

    figure, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(table.run, table.value, marker="o")
    releases = table[table.sae_fingerprint != table.sae_fingerprint.shift()]
    for row in releases.itertuples():
        ax.axvline(row.run, color="grey", ls="--", lw=0.8)
        ax.annotate(
            f"SAE {row.sae_fingerprint[:8]}", (row.run, ax.get_ylim()[1]), fontsize=7, rotation=90, va="top", ha="right"
        )
    ax.set_xlabel("run id")
    ax.set_ylabel(f"{metric} (the metric's own units)")
    ax.set_title(f"{case_id}: {metric} across runs {table.run.min()}–{table.run.max()}", fontsize=10)
    figure.tight_layout()
    return figure
