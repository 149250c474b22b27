"""The results database: what every run measured, kept for reports, comparisons and history (stdlib sqlite3).

Tables: `runs` (one row a run of `pytest benchmarks` or `sae-bench gate`), `measurements` (one row a metric of a
case's groups: value, or null with the reason it is undefined, and its verdict), `vectors` (per-feature arrays a
figure needs, once per run and case, float32 + zlib). WAL and a busy timeout let pytest-xdist workers write at
once. A database of another schema version is refused with what to do.
"""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
DEFAULT_PATH = Path(".sae-bench") / "results.sqlite"
ENV = "SAE_BENCH_RESULTS"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT NOT NULL, ended TEXT, git_commit TEXT, versions TEXT NOT NULL, device TEXT NOT NULL,
    selection TEXT NOT NULL, exit_status INTEGER
);
CREATE TABLE IF NOT EXISTS measurements (
    run INTEGER NOT NULL REFERENCES runs(id), case_id TEXT NOT NULL, grp TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, undefined_reason TEXT, expected REAL, threshold REAL, direction TEXT, verdict TEXT NOT NULL,
    sae TEXT NOT NULL, sae_fingerprint TEXT NOT NULL, model TEXT NOT NULL, model_fingerprint TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (run, case_id, metric)
);
CREATE TABLE IF NOT EXISTS vectors (
    run INTEGER NOT NULL REFERENCES runs(id), case_id TEXT NOT NULL, name TEXT NOT NULL, length INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run, case_id, name)
);
"""


class ResultsSchemaError(RuntimeError):
    """The database was written by another version of the suite."""


def default_path() -> Path:
    """`$SAE_BENCH_RESULTS`, else .sae-bench/results.sqlite under the working directory."""
    return Path(os.environ.get(ENV) or DEFAULT_PATH)


@dataclass(frozen=True)
class CaseMeasurement:
    """What one (case, group) measured: every metric of the group, with its verdict where one was given."""

    case_id: str
    group: str
    values: Mapping[str, float | None]
    undefined: Mapping[str, str]
    verdicts: pd.DataFrame
    """The verdict table (metric, expected, threshold, direction, verdict); metrics not in it are unchecked."""
    sae: str
    sae_fingerprint: str
    model: str
    model_fingerprint: str
    tokens: int


class ResultsDB:
    """One sqlite file; every method opens its own short transaction, so several processes can share it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(self.path, timeout=60)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA busy_timeout=60000")
        with self.connection:
            self.connection.executescript(_SCHEMA)
            found = self.connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if found is None:
                self.connection.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(found[0]) != SCHEMA_VERSION:
                raise ResultsSchemaError(
                    f"{self.path} holds results of schema version {found[0]}; this suite writes version "
                    f"{SCHEMA_VERSION}. Move the file away (or pass --results with another path) to start a new one."
                )

    def close(self) -> None:
        self.connection.close()

    # -- writing ------------------------------------------------------------------------------------------------
    def start_run(self, *, selection: str, device: str, git_commit: str | None, versions: Mapping[str, str]) -> int:
        with self.connection:
            cursor = self.connection.execute(
                "INSERT INTO runs (started, git_commit, versions, device, selection) VALUES (?, ?, ?, ?, ?)",
                (_now(), git_commit, json.dumps(dict(versions), sort_keys=True), device, selection),
            )
        return int(cursor.lastrowid)

    def finish_run(self, run: int, exit_status: int) -> None:
        with self.connection:
            self.connection.execute(
                "UPDATE runs SET ended = ?, exit_status = ? WHERE id = ?", (_now(), exit_status, run)
            )

    def record(self, run: int, measured: CaseMeasurement) -> None:
        verdicts = measured.verdicts.set_index("metric") if not measured.verdicts.empty else None
        rows = []
        for metric, value in measured.values.items():
            checked = verdicts is not None and metric in verdicts.index
            row = verdicts.loc[metric] if checked else None
            rows.append((
                run, measured.case_id, measured.group, metric, _number(value), measured.undefined.get(metric),
                _number(row["expected"]) if checked else None, float(row["threshold"]) if checked else None,
                row["direction"] if checked else None, row["verdict"] if checked else "unchecked",
                measured.sae, measured.sae_fingerprint, measured.model, measured.model_fingerprint, measured.tokens,
            ))  # fmt: skip
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )

    def record_vectors(self, run: int, case_id: str, vectors: Mapping[str, np.ndarray]) -> None:
        rows = [
            (run, case_id, name, int(array.size), zlib.compress(np.asarray(array, np.float32).tobytes(), 6))
            for name, array in vectors.items()
        ]
        with self.connection:
            self.connection.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)", rows)

    # -- reading ------------------------------------------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM runs ORDER BY id", self.connection)

    def resolve_run(self, run: str | int | None) -> int:
        """`latest` (or None) → the newest run that recorded measurements; else the id, checked."""
        if run in (None, "latest"):
            found = self.connection.execute("SELECT MAX(run) FROM measurements").fetchone()[0]
            if found is None:
                raise ValueError(f"{self.path} holds no measured run yet; run `pytest benchmarks` first")
            return int(found)
        ids = {int(r) for (r,) in self.connection.execute("SELECT id FROM runs")}
        if int(run) not in ids:
            raise ValueError(f"no run {run} in {self.path}; runs: {sorted(ids) or 'none'}")
        return int(run)

    def measurements(
        self, run: int | None = None, case_id: str | None = None, metric: str | None = None
    ) -> pd.DataFrame:
        clauses, params = [], []
        for column, value in (("run", run), ("case_id", case_id), ("metric", metric)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT * FROM measurements {where} ORDER BY run, case_id, grp, metric"
        return pd.read_sql_query(query, self.connection, params=params)

    def vectors(self, run: int, case_id: str) -> dict[str, np.ndarray]:
        rows = self.connection.execute("SELECT name, data FROM vectors WHERE run = ? AND case_id = ?", (run, case_id))
        return {name: np.frombuffer(zlib.decompress(data), dtype=np.float32) for name, data in rows}

    def vector_cases(self, run: int) -> list[str]:
        rows = self.connection.execute("SELECT DISTINCT case_id FROM vectors WHERE run = ? ORDER BY case_id", (run,))
        return [case for (case,) in rows]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def cases_matching(cases: Iterable[str], expression: str | None) -> list[str]:
    """The case ids a `-k`-style expression selects (`@` allowed), or all of them."""
    if not expression:
        return sorted(set(cases))
    from sae_bench.gate import Selection

    selection = Selection(expression)
    return sorted({case for case in cases if selection.matches(case)})
