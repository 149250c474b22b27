"""`sae-bench compare` and `sae-bench history`: how the recorded metrics moved between runs and across releases."""

from __future__ import annotations

import pandas as pd

from sae_bench.expectations import MetricExpectation
from sae_bench.results_db import ResultsDB


def previous_run(db: ResultsDB, run: int) -> int:
    """The newest run before `run` that recorded measurements."""
    found = db.connection.execute("SELECT MAX(run) FROM measurements WHERE run < ?", (run,)).fetchone()[0]
    if found is None:
        raise ValueError(f"no recorded run before run {run} to compare with; pass --baseline ID")
    return int(found)


def compare_runs(db: ResultsDB, baseline: int, run: int) -> pd.DataFrame:
    """Every metric both runs measured for the same case whose value moved, with its tolerance and a verdict:
    the move judged against the baseline value with the expectation's tolerance and direction."""
    keys = ["case_id", "grp", "metric"]
    old = db.measurements(baseline)[keys + ["value", "threshold", "direction"]]
    new = db.measurements(run)[keys + ["value"]]
    both = old.merge(new, on=keys, suffixes=("_baseline", "_run"))
    moved = both[~((both.value_baseline == both.value_run) | (both.value_baseline.isna() & both.value_run.isna()))]
    verdicts = []
    for row in moved.itertuples():
        if pd.isna(row.threshold) or pd.isna(row.value_baseline):
            verdicts.append("moved (no tolerance)" if pd.isna(row.threshold) else "was undefined")
            continue
        expectation = MetricExpectation(row.value_baseline, row.direction, abs=row.threshold)
        verdicts.append(expectation.verdict(None if pd.isna(row.value_run) else row.value_run))
    table = moved.assign(change=moved.value_run - moved.value_baseline, verdict=verdicts)
    columns = keys + ["value_baseline", "value_run", "change", "threshold", "direction", "verdict"]
    return table[columns].reset_index(drop=True)


def history(db: ResultsDB, case_id: str, metric: str) -> pd.DataFrame:
    """The metric across runs, with the SAE fingerprint that marks a release."""
    rows = db.measurements(case_id=case_id, metric=metric)
    if rows.empty:
        raise ValueError(f"no run recorded {metric!r} for {case_id!r}")
    runs = db.runs()[["id", "started", "git_commit"]].rename(columns={"id": "run"})
    table = rows.merge(runs, on="run")[["run", "started", "git_commit", "value", "verdict", "sae", "sae_fingerprint"]]
    return table.reset_index(drop=True)


def history_figure(table: pd.DataFrame, case_id: str, metric: str):
    """The metric's trend over runs; a new SAE fingerprint (a release) is marked with a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
