"""A results database and a user's case folder written at 3dbf69a, before definition versions (schema 2, expectation
format 1), still open, run and compare: the database is migrated in place (every old value is version 1 of its
definition), the case folder's files read as version 1; and two runs that measured a metric under different
definitions are not compared unless asked (`--allow-redefined`)."""

from __future__ import annotations

import io
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from sae_bench.cli import main
from sae_bench.results_store.database import FEATURES, SCHEMA_VERSION, ResultsDB

DATA = Path(__file__).resolve().parents[1] / "data"
ROOT = DATA.parents[1]
OLD_RUNS = (2, 3)
"""The two finished runs of the 3dbf69a database that passed (run 1 wrote the case folder's expectation files)."""


@pytest.fixture
def old_database(tmp_path) -> Path:
    path = tmp_path / "results.sqlite"
    shutil.copy(DATA / "results-3dbf69a.sqlite", path)
    return path


def test_a_database_made_before_versions_is_migrated_in_place_and_keeps_every_row(old_database):
    with sqlite3.connect(old_database) as connection:
        before = connection.execute("SELECT * FROM measurements ORDER BY run, case_id, metric").fetchall()
        assert connection.execute("SELECT value FROM meta").fetchone() == ("2",)
    db = ResultsDB(old_database)
    rows = db.measurements()
    assert len(rows) == len(before) and set(rows.definition) == {1} and set(rows.dtype) == {"float32"}
    assert [tuple(r) for r in rows.drop(columns=["definition", "dtype"]).itertuples(index=False)] == sorted(
        before, key=lambda r: (r[0], r[1], r[2], r[3])
    )
    assert db.scalar("SELECT value FROM meta WHERE key = 'schema_version'") == str(SCHEMA_VERSION)
    db.close()


def test_a_database_made_before_versions_opens_read_only_without_being_changed(old_database, capsys, tmp_path):
    digest = old_database.read_bytes()
    assert main(["compare", "--results", str(old_database), "--baseline", "2", "--run", "3"]) == 0
    assert "0 metrics moved" in capsys.readouterr().err
    assert ResultsDB(old_database, read_only=True).explanations(3, FEATURES) == []  # no explanations table: none
    assert main(["report", "--results", str(old_database), "--out", str(tmp_path / "report")]) == 0
    assert old_database.read_bytes() == digest  # the report commands never write


def test_runs_measured_under_different_definitions_are_compared_only_when_allowed(old_database, capsys):
    ResultsDB(old_database).close()  # migrated
    with sqlite3.connect(old_database) as connection:  # as if run 3 had measured l0 under a version 2 of it
        connection.execute("UPDATE measurements SET definition = 2 WHERE run = 3 AND metric = 'l0'")
    args = ["compare", "--results", str(old_database), "--baseline", "2", "--run", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "l0 v1 → v2" in err and "not comparable" in err and "--allow-redefined" in err
    assert main([*args, "--allow-redefined", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.count("l0") == 3 and out.count("v1 → v2,float32,redefined") == 3  # one row per case, none judged


def test_a_case_folder_made_before_versions_runs_records_and_compares(old_database, tmp_path, capsys):
    cases = tmp_path / "cases"
    shutil.copytree(DATA / "cases-3dbf69a", cases)
    before = {p: p.read_bytes() for p in (cases / "expectations").rglob("*.json")}
    args = [str(ROOT / "benchmarks" / "test_cases.py"), "-p", "no:cacheprovider", "-q", f"--cases-dir={cases}"]
    args += ["-k", "my-release or my-family", f"--results={old_database}", "--strict-expectations"]
    assert pytest.main(args) == pytest.ExitCode.OK  # judged against the format-1 files, every value version 1
    capsys.readouterr()
    assert {p: p.read_bytes() for p in before} == before  # read, not rewritten
    db = ResultsDB(old_database, read_only=True)
    new_run = db.resolve_run("latest")
    assert new_run == 4 and set(db.measurements(new_run).definition) == {1}
    assert set(db.measurements(new_run).verdict) == {"ok"}
    args = ["compare", "--results", str(old_database), "--baseline", "3", "--run", str(new_run), "--format", "csv"]
    assert main(args) == 0
    moved = pd.read_csv(io.StringIO(capsys.readouterr().out))
    # the same numbers, to float64 rounding (another thread count reorders a reduction), under the same definitions
    assert (moved.change.abs() <= 1e-12 * moved.value_baseline.abs().clip(lower=1)).all()
    assert set(moved.definition) <= {"v1"} and set(moved.verdict) <= {"ok"}
