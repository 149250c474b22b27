"""The results database, reports, comparisons and history, on one recorded run of a few zoo cases (with -n 2)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.cli import main
from sae_bench.reports import figures as report_figures
from sae_bench.reports.seed_report import build_report, seed_grid
from sae_bench.results_store.database import FEATURES, SCHEMA_VERSION, ResultsDB, ResultsSchemaError

REPO = Path(__file__).resolve().parents[2]
CASES = [
    "tiny-qwen2/base-sae@chat",
    "tiny-qwen2/chat-sae@chat",
    "tiny-qwen2/base-sae@chat/filtered",
    "tiny-qwen2/base-sae@base-vs-chat",
    *(f"tiny-mistral/base-sae@{m}" for m in ("base", "dose-5", "dose-20", "instruct")),
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A database holding one `pytest benchmarks -n 2` run of CASES."""
    path = tmp_path_factory.mktemp("results") / "results.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    selection = [arg for case in CASES for arg in ("--case-id", case)]
    command = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "--benchmark-disable",
               "-n", "2", "--dist", "loadgroup", "--results", str(path), *selection]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return path


@pytest.mark.full
def test_a_run_records_every_case_once_with_its_vectors(recorded):
    db = ResultsDB(recorded)
    runs = db.runs()
    assert len(runs) == 1 and runs.exit_status.iloc[0] == 0 and "--case-id" in runs.selection.iloc[0]
    rows = db.measurements(int(runs.id.iloc[0]))
    registry = load_registry(SHIPPED_CASES)
    expected = {(c, m) for c in CASES for g in registry.get(c).groups for m in registry.get(c).metrics(g)}
    assert set(zip(rows.case_id, rows.metric, strict=True)) == expected and len(rows) == len(expected)
    assert set(rows.verdict) <= {"ok", "improved", "regression", "unchecked"}
    assert rows.sae_fingerprint.str.len().min() == 64 and rows.model_fingerprint.str.contains("@").all()
    assert set(db.vectors(1, "tiny-qwen2/base-sae@chat")) == {"feature_density"}
    paired = db.vectors(1, "tiny-qwen2/base-sae@base-vs-chat")
    assert {"density_base", "density_finetuned", "activation_similarity", "logit_similarity", "regular"} <= set(paired)
    assert paired["density_base"].shape == (1024,)


def test_report_builds_offline_with_every_figure(recorded, tmp_path):
    page = build_report(ResultsDB(recorded), tmp_path / "report")
    folder = page.parent
    figures = sorted(p.name for p in folder.glob("*.png"))
    assert {"tiny-qwen2-heatmap.png", "tiny-mistral-dose.png", "tiny-qwen2-outliers.png"} <= set(figures)
    assert "tiny-qwen2_base-sae-base-vs-chat-features.png" in figures
    text, markdown = page.read_text(), (folder / "report.md").read_text()
    for name in figures:
        assert matplotlib.image.imread(folder / name).ndim == 3
        assert f"src='{name}'" in text and f"({name})" in markdown
    assert "SAE × model, filtered" in markdown and "base-sae" in markdown


def test_figures_name_their_axes_cases_and_run(recorded):
    db = ResultsDB(recorded)
    frame = db.measurements(1)
    registry = load_registry(SHIPPED_CASES)
    cases = [registry.get(c) for c in CASES[:2]]
    grid = {
        "CE rec.": seed_grid(frame, cases, "ce_loss_recovered"),
        "EV": seed_grid(frame, cases, "explained_variance"),
    }
    figure = report_figures.heatmaps(grid, "tiny-qwen2", 1)
    for ax in figure.axes[:2]:  # then the two colour bars
        assert ax.get_xlabel() == "model (activations from)" and ax.get_ylabel() == "SAE (trained on)"
        assert "tiny-qwen2, run 1" in ax.get_title()
    figure = report_figures.universality(db.vectors(1, CASES[3]), CASES[3], 1)
    assert figure.texts[0].get_text() == f"{CASES[3]}, run 1"
    labels = [ax.get_xlabel() for ax in figure.axes]
    assert labels[0] == "log10(feature density + 1e-10)" and "regular features" in labels[2]


def test_compare_passes_on_identical_runs_and_fails_on_a_move_beyond_tolerance(recorded, tmp_path, capsys):
    path = tmp_path / "results.sqlite"
    shutil.copy(recorded, path)
    for suffix in ("-wal", "-shm"):
        if Path(f"{recorded}{suffix}").exists():
            shutil.copy(f"{recorded}{suffix}", f"{path}{suffix}")
    db = ResultsDB(path)
    with db.connection:
        db.connection.execute(
            "INSERT INTO runs (started, ended, versions, device, selection, exit_status) "
            "VALUES ('t', 't', '{}', 'cpu', 'x', 0)"
        )
        columns = "case_id, grp, metric, value, undefined_reason, expected, threshold, direction, verdict, sae, "
        columns += "sae_fingerprint, model, model_fingerprint, tokens, registry, definition, dtype"
        db.connection.execute(f"INSERT INTO measurements SELECT 2, {columns} FROM measurements WHERE run = 1")
    assert main(["compare", "--results", str(path)]) == 0
    assert "0 metrics moved" in capsys.readouterr().err
    with db.connection:
        db.connection.execute("UPDATE measurements SET value = value - 10 * threshold WHERE run = 2 AND case_id = ? "
                              "AND metric = 'ce_loss_recovered'", (CASES[0],))  # fmt: skip
    assert main(["compare", "--results", str(path), "--baseline", "1", "--run", "2", "--format", "csv"]) == 1
    out = capsys.readouterr().out
    assert f"{CASES[0]},ce,ce_loss_recovered" in out and "regression" in out

    out_png = tmp_path / "history.png"
    assert main(["history", "--results", str(path), "--case", CASES[0], "--metric", "l0", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert matplotlib.image.imread(out_png).ndim == 3 and out.count("zoo:tiny-qwen2/base-sae ") == 2


def test_a_database_of_another_schema_version_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "old.sqlite"
    ResultsDB(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    expected = f"schema version 0.*writes version {SCHEMA_VERSION}.*Move the file away"
    with pytest.raises(ResultsSchemaError, match=expected):
        ResultsDB(path)


def test_a_version_1_database_is_migrated_in_place_and_keeps_its_runs(tmp_path):
    """Version 2 added measurements.registry, version 3 measurements.definition; a version-1 file gains both
    columns (empty, and version 1: the definition of every value measured before versions) and keeps every row."""
    path = tmp_path / "v1.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT NOT NULL, ended TEXT, git_commit "
            "TEXT, versions TEXT NOT NULL, device TEXT NOT NULL, selection TEXT NOT NULL, exit_status INTEGER);"
            "CREATE TABLE measurements (run INTEGER NOT NULL, case_id TEXT NOT NULL, grp TEXT NOT NULL, metric TEXT "
            "NOT NULL, value REAL, undefined_reason TEXT, expected REAL, threshold REAL, direction TEXT, verdict TEXT "
            "NOT NULL, sae TEXT NOT NULL, sae_fingerprint TEXT NOT NULL, model TEXT NOT NULL, model_fingerprint TEXT "
            "NOT NULL, tokens INTEGER NOT NULL, PRIMARY KEY (run, case_id, metric));"
            "INSERT INTO runs VALUES (1, 't', 't', NULL, '{}', 'cpu', '', 0);"
            "INSERT INTO measurements VALUES (1, 'a/s@m', 'ce', 'ce_clean', 2.0, NULL, NULL, NULL, NULL, 'unchecked', "
            "'s', 'f', 'm', 'f', 10);"
        )
    db = ResultsDB(path)
    rows = db.measurements(1)
    assert rows.value.tolist() == [2.0] and rows.registry.tolist() == [""] and rows.definition.tolist() == [1]
    assert db.connection.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
    assert db.explanations(1, FEATURES) == []  # schema 5's table, created empty
