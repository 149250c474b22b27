"""The results store on PostgreSQL (a server the test starts on 127.0.0.1) as on SQLite: the same schema and the
same report commands, and concurrent writers (processes starting runs and recording at once) lose and mix nothing."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pandas as pd
import pytest

from sae_bench.results_store.database import FEATURES, CaseMeasurement, Explanation, ResultsDB

pytestmark = pytest.mark.full  # the full tier only: `make test-fast` leaves this file out

WRITERS, CASES, METRICS = 6, 10, 5
NAMES = ["l0", "mse", "ce_clean", "ce_spliced", "kl_zero"]
"""METRICS defined metrics: each recorded value carries its definition's version."""


@pytest.fixture(scope="module")
def postgres_url():
    from tests.postgres_server import postgres_server

    with postgres_server() as url:
        yield url


def _measurement(writer: int, case: int) -> CaseMeasurement:
    values = {NAMES[k]: writer * 1000 + case * 10 + k + 0.5 for k in range(METRICS)}
    verdicts = pd.DataFrame([{"metric": "l0", "expected": 1.0, "threshold": 0.1, "direction": "both", "verdict": "ok"}])
    return CaseMeasurement(
        f"family/case-{case}", "g", values, {}, verdicts, f"sae-{writer}", "f", f"model-{writer}", "f", 64
    )


def _write_one_run(location: str, writer: int, queue) -> None:
    db = ResultsDB(location)
    run = db.start_run(selection=f"writer {writer}", device="cpu", git_commit=None, versions={"w": str(writer)})
    for case in range(CASES):
        db.record(run, _measurement(writer, case))
    db.finish_run(run, 0)
    db.close()
    queue.put((writer, run))


def _concurrent_writers_lose_nothing(location: str) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    writers = [context.Process(target=_write_one_run, args=(location, w, queue)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    runs = dict(queue.get(timeout=10) for _ in writers)
    assert len(set(runs.values())) == WRITERS  # one run id each
    db = ResultsDB(location, read_only=True)
    for writer, run in runs.items():
        got = db.measurements(run)
        assert len(got) == CASES * METRICS
        assert set(got.sae) == {f"sae-{writer}"}  # nothing of another writer's run
        expected = sorted(writer * 1000 + c * 10 + k + 0.5 for c in range(CASES) for k in range(METRICS))
        assert sorted(got.value) == expected  # 8-byte floats on both
        assert db.run_status(run) == "finished"


def test_concurrent_writers_to_sqlite_lose_nothing(tmp_path):
    _concurrent_writers_lose_nothing(str(tmp_path / "results.sqlite"))


def test_concurrent_writers_to_postgres_lose_nothing(postgres_url):
    _concurrent_writers_lose_nothing(postgres_url)


def test_postgres_store_serves_the_report_commands_as_sqlite_does(postgres_url, tmp_path):
    """The same runs recorded in both stores give the same `sae-bench compare` and `history` tables."""
    import numpy as np

    sqlite = str(tmp_path / "results.sqlite")
    for location in (sqlite, postgres_url):
        db = ResultsDB(location)
        for shift in (0.0, 0.5):  # a second run in which l0 moved out of its tolerance
            run = db.start_run(selection="compare", device="cpu", git_commit="abc", versions={})
            measured = _measurement(1, 1)
            values = dict(measured.values) | {"l0": measured.values["l0"] + shift}
            db.record(run, CaseMeasurement(**(measured.__dict__ | {"values": values})))
            db.record_vectors(run, "family/case-1", {"density": np.arange(4, dtype=np.float32)})
            db.finish_run(run, 0)
        db.close()

    def cli(*args: str) -> str:
        command = [sys.executable, "-m", "sae_bench.cli", *args]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert run.returncode in (0, 1), run.stderr
        return run.stdout

    last = {}
    for location in (sqlite, postgres_url):
        runs = ResultsDB(location, read_only=True).runs()
        first, second = (str(r) for r in runs.id.tail(2))
        last[location] = cli("compare", "--results", location, "--run", second, "--baseline", first)
        assert ResultsDB(location, read_only=True).vectors(int(second), "family/case-1")["density"].tolist() == [
            0.0,
            1.0,
            2.0,
            3.0,
        ]
    assert last[sqlite] == last[postgres_url] and "l0" in last[sqlite]


def test_an_unreachable_store_is_one_message(tmp_path):
    command = [
        sys.executable,
        "-m",
        "sae_bench.cli",
        "report",
        "--out",
        str(tmp_path),
        "--results",
        "postgresql://nobody@127.0.0.1:9/none",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "cannot connect to the results store" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_benchmark_run_records_into_postgres(postgres_url):
    """`pytest benchmarks --results postgresql://…` records the run there, and `sae-bench report` reads it back."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    command = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "--benchmark-disable", "-q"]
    command += ["--case-id", "tiny-gemma/base-sae@base", "-k", "reconstruction", "--results", postgres_url]
    run = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    db = ResultsDB(postgres_url, read_only=True)
    recorded = db.measurements(db.resolve_run("latest"))
    assert set(recorded.case_id) == {"tiny-gemma/base-sae@base"} and set(recorded.grp) == {"reconstruction"}
    assert db.run_status(db.resolve_run("latest")) == "finished"


def test_a_postgres_store_made_before_versions_is_migrated_in_place(postgres_url):
    """The 3dbf69a database's rows in a PostgreSQL store of schema 2 (the tables as that version made them): opened
    for writing, the store gains measurements.definition (version 1 for every old row) and keeps every row."""
    import sqlite3
    from pathlib import Path

    import psycopg

    from sae_bench.results_store import database

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE before_versions")
    url = postgres_url.rsplit("/", 1)[0] + "/before_versions"
    old = sqlite3.connect(Path(__file__).resolve().parents[1] / "data" / "results-3dbf69a.sqlite")
    with psycopg.connect(url, autocommit=True) as store:
        for statement in database._SCHEMA:  # schema 2: the same tables without the columns versions 3 and 4 added
            schema_2 = statement.replace(", definition INTEGER NOT NULL DEFAULT 1", "")
            schema_2 = schema_2.replace("\n    dtype TEXT NOT NULL DEFAULT 'float32',", "")
            store.execute(schema_2.format(serial="BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION", blob="BYTEA"))
        store.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        for table in ("runs", "measurements"):
            rows = old.execute(f"SELECT * FROM {table}").fetchall()
            marks = ", ".join(["%s"] * len(rows[0]))
            with store.cursor() as cursor:
                cursor.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    db = ResultsDB(url)
    migrated = db.measurements()
    assert len(migrated) == old.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 72
    assert set(migrated.definition) == {1} and db.scalar("SELECT value FROM meta") == str(database.SCHEMA_VERSION)
    assert set(migrated.dtype) == {"float32"}
    assert set(migrated.verdict) == {"ok"} and set(migrated.run) == {2, 3}
    db.close()


def _explanation_round_trip(location: str) -> None:
    """An explanation is recorded once per (run, case, kind), read back as written, replaced when recorded again,
    and forgotten with a run that measured nothing."""
    db = ResultsDB(location)
    run = db.start_run(selection="explain", device="cpu", git_commit=None, versions={})
    db.record(run, _measurement(1, 1))
    body = {"counts": {"born": 2}, "tables": {"density": [{"feature": 3, "nu": None, "fires_most_on_own": "a⟦b⟧⏎"}]}}
    first = Explanation("family/case-1", FEATURES, "family/own", "bfloat16", {"latent_scaling_beta": 1}, body)
    db.record_explanation(run, first)
    assert db.explanations(run, FEATURES) == [first] and db.explanations(run, "other") == []
    again = Explanation(**(first.__dict__ | {"against": "family/own-2"}))
    db.record_explanation(run, again)
    assert db.explanations(run, FEATURES) == [again]
    empty = db.start_run(selection="nothing", device="cpu", git_commit=None, versions={})
    db.record_explanation(empty, first)
    db.forget_run(empty)
    assert db.explanations(empty, FEATURES) == [] and db.explanations(run, FEATURES) == [again]
    db.close()


def test_explanations_round_trip_in_postgres_as_in_sqlite(postgres_url, tmp_path):
    for location in (str(tmp_path / "results.sqlite"), postgres_url):
        _explanation_round_trip(location)
