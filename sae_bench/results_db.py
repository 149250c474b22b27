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

from sae_bench.errors import BadInput

SCHEMA_VERSION = 2
"""2 added measurements.registry (which case registry a case came from); a version-1 file is migrated in place."""
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
    tokens INTEGER NOT NULL, registry TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run, case_id, metric)
);
CREATE TABLE IF NOT EXISTS vectors (
    run INTEGER NOT NULL REFERENCES runs(id), case_id TEXT NOT NULL, name TEXT NOT NULL, length INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run, case_id, name)
);
"""


class ResultsSchemaError(BadInput):
    """The database was written by another version of the suite."""


class ResultsFileError(BadInput):
    """The results path is not a usable SQLite database (not SQLite, read-only, a folder)."""


def default_path() -> Path:
    """`$SAE_BENCH_RESULTS`; else, in a checkout, .sae-bench/results.sqlite under the working directory; else (an
    installed suite, which writes nothing into the folder it runs in) results.sqlite in the suite's cache."""
    from sae_bench.cache import cache_dir
    from sae_bench.shipped import in_checkout

    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return DEFAULT_PATH if in_checkout() else cache_dir() / "results.sqlite"


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
    registry: str = ""
    """Which case registry the case came from: the shipped one (with its version), or a user's folder and commit."""


class ResultsDB:
    """One sqlite file; every method opens its own short transaction, so several processes can share it."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        """Open (for writing, creating it if needed) the database at `path`; `read_only` opens an existing one
        for the report commands, so a read-only file can still be read. Anything that is not a usable SQLite file
        raises ResultsFileError naming the path and the fix."""
        self.path = Path(path)
        if self.path.is_dir():
            raise ResultsFileError(f"{self.path} is a folder; --results takes a file path (e.g. {DEFAULT_PATH})")
        try:
            if read_only:
                self.connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.connection = sqlite3.connect(self.path, timeout=60)
                self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA busy_timeout=60000")
            self._check_schema(read_only)
        except sqlite3.DatabaseError as err:  # not SQLite, read-only, locked, unreadable
            raise ResultsFileError(self._unusable(err, read_only)) from err
        except OSError as err:
            raise ResultsFileError(f"cannot open the results database {self.path}: {err}") from err

    def _check_schema(self, read_only: bool) -> None:
        with self.connection:
            if not read_only:
                self.connection.executescript(_SCHEMA)
            found = self.connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if found is not None and found[0] == "1" and not read_only:  # version 1 lacked measurements.registry
                self.connection.execute("ALTER TABLE measurements ADD COLUMN registry TEXT NOT NULL DEFAULT ''")
                self.connection.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )
                found = (str(SCHEMA_VERSION),)
            if found is None and not read_only:
                self.connection.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif found is None or int(found[0]) not in (1, SCHEMA_VERSION):
                raise ResultsSchemaError(
                    f"{self.path} holds results of schema version {found[0] if found else 'none'}; this suite writes "
                    f"version {SCHEMA_VERSION}. Move the file away (or pass --results with another path) to start a "
                    "new one."
                )

    def _unusable(self, err: sqlite3.DatabaseError, read_only: bool) -> str:
        text = str(err)
        if "readonly" in text.replace(" ", "") or "unable to open" in text:
            fix = "make it writable, or pass --results with a writable path (or --no-results)"
            return f"cannot write the results database {self.path} ({text}): {fix}"
        if "no such table" in text:
            return (
                f"{self.path} is an SQLite file but not a results database ({text}); pass --results with another path"
            )
        what = "read" if read_only else "use"
        return (
            f"cannot {what} {self.path} as a results database ({text}): it is not an SQLite file written by this "
            "suite. Move it away, or pass --results with another path"
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
                measured.registry,
            ))  # fmt: skip
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
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
                raise BadInput(f"{self.path} holds no measured run yet; run `pytest benchmarks` first")
            return int(found)
        ids = {int(r) for (r,) in self.connection.execute("SELECT id FROM runs")}
        if not str(run).isdigit() or int(run) not in ids:
            raise BadInput(f"no run {run!r} in {self.path}; its runs: {_ranges(sorted(ids))}, or latest")
        return int(run)

    def run_status(self, run: int) -> str:
        """finished (passed or failed), or why not: still running or killed, interrupted, stopped by an error."""
        ended, exit_status = self.connection.execute(
            "SELECT ended, exit_status FROM runs WHERE id = ?", (run,)
        ).fetchone()
        return run_status(ended, exit_status)

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


RUN_FINISHED = "finished"
INTERRUPTED_EXIT = 2
"""pytest's exit status for a run stopped by Ctrl-C (its ExitCode.INTERRUPTED)."""


def run_status(ended: str | None, exit_status: int | None) -> str:
    """`finished` when pytest ran to the end (passed or with failures); otherwise what happened."""
    if ended is None or exit_status is None:
        return "did not finish (still running, or killed)"
    if exit_status in (0, 1, 5):
        return RUN_FINISHED
    if exit_status == INTERRUPTED_EXIT:
        return "interrupted"
    return f"stopped by an error (pytest exit {exit_status})"


def _ranges(ids: list[int]) -> str:
    """1-4, 7, 9-10: run ids compactly."""
    spans: list[list[int]] = []
    for run in ids:
        if spans and run == spans[-1][1] + 1:
            spans[-1][1] = run
        else:
            spans.append([run, run])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans) or "none"


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
