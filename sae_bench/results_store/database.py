"""The results database: what every run measured, kept for reports, comparisons and history.

A file path is an SQLite database (stdlib sqlite3; WAL and a busy timeout let pytest-xdist workers write at once);
a `postgresql://` URL is a shared PostgreSQL store (psycopg) that several CI runners and Ray drivers write at once,
with the same schema and the same commands. Tables: `runs` (one row a run of `pytest benchmarks` or `sae-bench
gate`; its id is the database's own sequence, so concurrent runs never share one), `measurements` (one row a metric
of a case's groups: value, or null with the reason it is undefined, its verdict, and the version of the metric's
definition it was measured under, and the dtype the model ran in), `vectors` (per-feature arrays
a figure needs, once per run and case, float32 + zlib), `explanations` (why a transfer case fails, as the suite's
--explain recorded it: the table of its SAE's features that broke from the case of the same SAE on its own model,
JSON, with the definition versions and the dtype). A database of another schema version is refused with what to
do.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from sae_bench.cache import cache_dir
from sae_bench.cases.selection import Selection
from sae_bench.engine.definitions import current_version
from sae_bench.errors import BadInput
from sae_bench.precision import DEFAULT_DTYPE, RECORDED_BEFORE
from sae_bench.shipped import in_checkout

SCHEMA_VERSION = 5
"""2 added measurements.registry (which case registry a case came from), 3 measurements.definition (the version of the
metric's definition the value was measured under), 4 measurements.dtype (the precision the case's models ran in), 5
the explanations table; an older database is migrated in place (`_MIGRATIONS`)."""
DEFAULT_PATH = Path(".sae-bench") / "results.sqlite"
ENV = "SAE_BENCH_RESULTS"

_EXPLANATIONS_TABLE = """CREATE TABLE IF NOT EXISTS explanations (
    run INTEGER NOT NULL REFERENCES runs(id), case_id TEXT NOT NULL, kind TEXT NOT NULL, against TEXT NOT NULL,
    dtype TEXT NOT NULL, definitions TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (run, case_id, kind)
)"""
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
    id {serial},
    started TEXT NOT NULL, ended TEXT, git_commit TEXT, versions TEXT NOT NULL, device TEXT NOT NULL,
    selection TEXT NOT NULL, exit_status INTEGER
)""",
    """CREATE TABLE IF NOT EXISTS measurements (
    run INTEGER NOT NULL REFERENCES runs(id), case_id TEXT NOT NULL, grp TEXT NOT NULL, metric TEXT NOT NULL,
    value {real}, undefined_reason TEXT, expected {real}, threshold {real}, direction TEXT, verdict TEXT NOT NULL,
    sae TEXT NOT NULL, sae_fingerprint TEXT NOT NULL, model TEXT NOT NULL, model_fingerprint TEXT NOT NULL,
    tokens INTEGER NOT NULL, registry TEXT NOT NULL DEFAULT '', definition INTEGER NOT NULL DEFAULT 1,
    dtype TEXT NOT NULL DEFAULT 'float32',
    PRIMARY KEY (run, case_id, metric)
)""",
    """CREATE TABLE IF NOT EXISTS vectors (
    run INTEGER NOT NULL REFERENCES runs(id), case_id TEXT NOT NULL, name TEXT NOT NULL, length INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (run, case_id, name)
)""",
    _EXPLANATIONS_TABLE,
)
"""The tables, in each dialect's types (`_Dialect`): an 8-byte float, an auto-numbered key, bytes."""
_MEASUREMENT_COLUMNS = (
    "run, case_id, grp, metric, value, undefined_reason, expected, threshold, direction, verdict, sae, "
    "sae_fingerprint, model, model_fingerprint, tokens, registry, definition, dtype"
)
_MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE measurements ADD COLUMN registry TEXT NOT NULL DEFAULT ''",
    2: "ALTER TABLE measurements ADD COLUMN definition INTEGER NOT NULL DEFAULT 1",
    3: f"ALTER TABLE measurements ADD COLUMN dtype TEXT NOT NULL DEFAULT '{RECORDED_BEFORE}'",
    4: _EXPLANATIONS_TABLE,  # every table is created (IF NOT EXISTS) before migrating: this restates it
}
"""Schema version → the statement that brings a database of that version to the next. Every value recorded before
version 3 was measured under version 1 of its metric's definition (the first versioned definitions), and every one
recorded before version 4 with its models in float32 (the only precision the suite ran), so the defaults are the
truth for them."""
_ADDED_COLUMNS = {"registry": "", "definition": 1, "dtype": RECORDED_BEFORE}
"""Columns a later schema added, with what a database too old to have them (opened read-only) means by them."""


def is_postgres(location: str | Path) -> bool:
    """Whether a `--results` value names a PostgreSQL store (a URL) rather than an SQLite file."""
    return str(location).startswith(("postgresql://", "postgres://"))


_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@/\s]*@")
_SECRET_PARAMETER = re.compile(r"([?&;](?:[\w-]*(?:pass|pwd|secret|token|key)[\w-]*)=)[^&;#\s]*", re.IGNORECASE)
"""A query parameter that carries a secret: password, sslpassword, passfile, a token, a key."""


def redacted(text: str) -> str:
    """`text` with every secret a results URL can carry replaced by ***: the password of user:password@, secret
    query parameters (password=, sslpassword=, …), and the value of $PGPASSWORD wherever it appears. Used for
    every message and for every value the database records (the command line of a run)."""
    text = _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub(r"\1***@", str(text)))
    password = os.environ.get("PGPASSWORD")
    return text.replace(password, "***") if password else text


BUSY_WAIT_S = 60.0
"""How long a writer waits for another writer's lock on an SQLite results file before it says the file is busy."""


def _switch_to_wal(connection: sqlite3.Connection, wait_s: float) -> None:
    """PRAGMA journal_mode=WAL, retried: on a new file it takes an exclusive lock without waiting for one, so
    writers opening the file at once saw "database is locked" (up to 8 of 90 openings, 6 at once, here) whatever the
    busy timeout."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _SQLite:
    """sqlite3 behind the two calls the database makes: run a statement, hold a transaction."""

    types = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL", "blob": "BLOB"}

    def __init__(self, path: Path, read_only: bool):
        self.path, self.read_only = path, read_only
        if read_only:
            self.connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_WAIT_S)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(path, timeout=BUSY_WAIT_S)
            _switch_to_wal(self.connection, BUSY_WAIT_S)
        self.connection.execute(f"PRAGMA busy_timeout={int(BUSY_WAIT_S * 1000)}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; SQLite's errors (busy, read-only, damaged) become a ResultsFileError that says which."""
        try:
            with self.connection:
                yield
        except sqlite3.DatabaseError as err:
            raise ResultsFileError(unusable(self.path, err, self.read_only)) from None

    def execute(self, sql: str, params: Iterable = ()):
        return self.connection.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: list) -> None:
        self.connection.executemany(sql, rows)

    def lock_schema(self) -> None:
        """Take the write lock now: writers that create a new file at once would both read no schema version and
        both insert it (sqlite3 begins a transaction only at the first write)."""
        self.connection.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        self.connection.close()


class _Postgres:
    """psycopg behind the same two calls; `?` placeholders become `%s`."""

    types = {"serial": "BIGSERIAL PRIMARY KEY", "real": "DOUBLE PRECISION", "blob": "BYTEA"}

    def __init__(self, url: str, read_only: bool):
        try:
            import psycopg
        except ImportError:
            raise BadInput("a postgresql:// results store needs psycopg: pip install 'psycopg[binary]'") from None
        try:
            self.connection = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as err:
            why = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
            raise ResultsFileError(f"cannot connect to the results store {redacted(url)}: {redacted(why)}") from None
        self.connection.read_only = True if read_only else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.connection.transaction():
            yield

    def execute(self, sql: str, params: Iterable = ()):
        return self.connection.execute(sql.replace("?", "%s"), tuple(params))

    def executemany(self, sql: str, rows: list) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)

    def lock_schema(self) -> None:
        """Writers that create the tables at once would collide in PostgreSQL's catalog: one at a time."""
        self.connection.execute("SELECT pg_advisory_xact_lock(7160)")

    def close(self) -> None:
        self.connection.close()


class ResultsSchemaError(BadInput):
    """The database was written by another version of the suite."""


class ResultsFileError(BadInput):
    """The results path is not a usable SQLite database (not SQLite, read-only, a folder)."""


def default_path() -> Path | str:
    """`$SAE_BENCH_RESULTS` (a path, or a `postgresql://` URL); else, in a checkout, .sae-bench/results.sqlite under
    the working directory; else (an installed suite, which writes nothing into the folder it runs in)
    results.sqlite in the suite's cache."""
    if os.environ.get(ENV):
        value = os.environ[ENV]
        return value if is_postgres(value) else Path(value)
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
    dtype: str = DEFAULT_DTYPE
    """The precision the case's models ran in."""


FEATURES = "features"
"""The explanation kind of a transfer case's feature table (`engine.feature_breaks.feature_table`)."""


@dataclass(frozen=True)
class Explanation:
    """Why one transfer case fails, as a run recorded it: `kind` "features" is the table of the SAE's features that
    broke from `against` (the same SAE on the model it was trained on)."""

    case_id: str
    kind: str
    against: str
    dtype: str
    definitions: Mapping[str, int]
    """The version of each metric definition the body's numbers were computed under."""
    body: dict


def unusable(path: Path, err: sqlite3.DatabaseError, read_only: bool) -> str:
    """What is wrong with an SQLite results file, from sqlite3's error: busy, read-only, not ours; and the fix."""
    text = str(err)
    if "locked" in text or "busy" in text:
        return (
            f"the results database {path} is busy: another process held its write lock for over {BUSY_WAIT_S:g} s. "
            "Wait for that run to finish, or pass --results with another path (or --no-results)"
        )
    if "readonly" in text.replace(" ", "") or "unable to open" in text:
        fix = "make it writable, or pass --results with a writable path (or --no-results)"
        return f"cannot write the results database {path}: it is read-only ({text}): {fix}"
    if "no such table" in text:
        return f"{path} is an SQLite file but not a results database ({text}); pass --results with another path"
    what = "read" if read_only else "use"
    return (
        f"cannot {what} {path} as a results database ({text}): it is not an SQLite file written by this suite. "
        "Move it away, or pass --results with another path"
    )


class ResultsDB:
    """An SQLite file or a PostgreSQL store; every method runs its own short transaction, so several processes (and
    machines, with PostgreSQL) can share it."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        """Open (for writing, creating its tables if needed) the database at `path`, an SQLite file path or a
        `postgresql://` URL; `read_only` opens an existing one for the report commands. Anything unusable raises
        ResultsFileError naming the place and the fix."""
        if is_postgres(path):
            self.path = redacted(str(path))
            self.db: _SQLite | _Postgres = _Postgres(str(path), read_only)
            self._check_schema(read_only)
            return
        self.path = Path(path)
        if self.path.is_dir():
            raise ResultsFileError(f"{self.path} is a folder; --results takes a file path (e.g. {DEFAULT_PATH})")
        try:
            self.db = _SQLite(self.path, read_only)
            self._check_schema(read_only)
        except sqlite3.DatabaseError as err:  # not SQLite, read-only, locked, unreadable
            raise ResultsFileError(unusable(self.path, err, read_only)) from err
        except OSError as err:
            raise ResultsFileError(f"cannot open the results database {self.path}: {err}") from err

    @property
    def connection(self):
        """The driver's own connection (sqlite3 or psycopg), for tests that edit a database by hand."""
        return self.db.connection

    def _check_schema(self, read_only: bool) -> None:
        with self.db.transaction():
            if not read_only:
                self.db.lock_schema()
                for statement in _SCHEMA:
                    self.db.execute(statement.format(**self.db.types))
            found = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            older = found is not None and found[0].isdigit() and int(found[0]) in _MIGRATIONS
            if older and not read_only:  # migrated in place, one version at a time, in this transaction
                for step in range(int(found[0]), SCHEMA_VERSION):
                    self.db.execute(_MIGRATIONS[step])
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                found = (str(SCHEMA_VERSION),)
            if found is None and not read_only:
                self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif found is None or not (older or found[0] == str(SCHEMA_VERSION)):
                raise ResultsSchemaError(
                    f"{self.path} holds results of schema version {found[0] if found else 'none'}; this suite writes "
                    f"version {SCHEMA_VERSION}. Move the file away (or pass --results with another path) to start a "
                    "new one."
                )

    def _frame(self, sql: str, params: Iterable = ()) -> pd.DataFrame:
        cursor = self.db.execute(sql, params)
        return pd.DataFrame(cursor.fetchall(), columns=[column[0] for column in cursor.description])

    def scalar(self, sql: str, params: Iterable = ()):
        """The first column of the first row a query returns (None when it returns none)."""
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self.db.close()

    # -- writing ------------------------------------------------------------------------------------------------
    def start_run(self, *, selection: str, device: str, git_commit: str | None, versions: Mapping[str, str]) -> int:
        """A new run; its `selection` (the command line) is stored with every secret redacted."""
        with self.db.transaction():
            cursor = self.db.execute(
                "INSERT INTO runs (started, git_commit, versions, device, selection) VALUES (?, ?, ?, ?, ?) "
                "RETURNING id",
                (_now(), git_commit, json.dumps(dict(versions), sort_keys=True), device, redacted(selection)),
            )
            return int(cursor.fetchone()[0])

    def forget_run(self, run: int) -> None:
        """Remove a run that measured nothing (a usage error stopped it): a run that never ran leaves no row."""
        with self.db.transaction():
            if self.scalar("SELECT COUNT(*) FROM measurements WHERE run = ?", (run,)) == 0:
                self.db.execute("DELETE FROM vectors WHERE run = ?", (run,))
                self.db.execute("DELETE FROM explanations WHERE run = ?", (run,))
                self.db.execute("DELETE FROM runs WHERE id = ?", (run,))

    def finish_run(self, run: int, exit_status: int) -> None:
        with self.db.transaction():
            self.db.execute("UPDATE runs SET ended = ?, exit_status = ? WHERE id = ?", (_now(), exit_status, run))

    def record(self, run: int, measured: CaseMeasurement) -> None:
        verdicts = measured.verdicts.set_index("metric") if not measured.verdicts.empty else None
        rows = []
        for metric, value in measured.values.items():
            checked = verdicts is not None and metric in verdicts.index
            row = verdicts.loc[metric] if checked else None
            rows.append((
                run, measured.case_id, measured.group, metric, _number(value), measured.undefined.get(metric),
                _number(row["expected"]) if checked else None, _number(row["threshold"]) if checked else None,
                row["direction"] if checked else None, row["verdict"] if checked else "unchecked",
                measured.sae, measured.sae_fingerprint, measured.model, measured.model_fingerprint, measured.tokens,
                measured.registry, current_version(metric), measured.dtype,
            ))  # fmt: skip
        columns = _MEASUREMENT_COLUMNS.split(", ")
        update = ", ".join(f"{c} = excluded.{c}" for c in columns[3:])
        with self.db.transaction():
            self.db.executemany(
                f"INSERT INTO measurements ({_MEASUREMENT_COLUMNS}) VALUES ({', '.join('?' * len(columns))}) "
                f"ON CONFLICT (run, case_id, metric) DO UPDATE SET {update}",
                rows,
            )

    def record_vectors(self, run: int, case_id: str, vectors: Mapping[str, np.ndarray]) -> None:
        rows = [
            (run, case_id, name, int(array.size), zlib.compress(np.asarray(array, np.float32).tobytes(), 6))
            for name, array in vectors.items()
        ]
        with self.db.transaction():
            self.db.executemany(
                "INSERT INTO vectors VALUES (?, ?, ?, ?, ?) ON CONFLICT (run, case_id, name) "
                "DO UPDATE SET length = excluded.length, data = excluded.data",
                rows,
            )

    def record_explanation(self, run: int, explanation: Explanation) -> None:
        row = (
            run, explanation.case_id, explanation.kind, explanation.against, explanation.dtype,
            json.dumps(explanation.definitions, sort_keys=True), json.dumps(explanation.body),
        )  # fmt: skip
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO explanations VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run, case_id, kind) DO UPDATE SET "
                "against = excluded.against, dtype = excluded.dtype, definitions = excluded.definitions, "
                "body = excluded.body",
                row,
            )

    # -- reading ------------------------------------------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        return self._frame("SELECT * FROM runs ORDER BY id")

    def resolve_run(self, run: str | int | None) -> int:
        """`latest` (or None) → the newest run that recorded measurements; else the id, checked."""
        if run in (None, "latest"):
            found = self.scalar("SELECT MAX(run) FROM measurements")
            if found is None:
                raise BadInput(f"{self.path} holds no measured run yet; run `pytest benchmarks` first")
            return int(found)
        ids = {int(r) for (r,) in self.db.execute("SELECT id FROM runs")}
        if not str(run).isdigit() or int(run) not in ids:
            raise BadInput(f"no run {run!r} in {self.path}; its runs: {_ranges(sorted(ids))}, or latest")
        return int(run)

    def run_status(self, run: int) -> str:
        """finished (passed or failed), or why not: still running or killed, interrupted, stopped by an error."""
        ended, exit_status = self.db.execute("SELECT ended, exit_status FROM runs WHERE id = ?", (run,)).fetchone()
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
        frame = self._frame(query, params)
        for column, meaning in _ADDED_COLUMNS.items():  # an older database, opened read-only, is not migrated
            if column not in frame.columns:
                frame[column] = meaning
        return frame

    def vectors(self, run: int, case_id: str) -> dict[str, np.ndarray]:
        rows = self.db.execute("SELECT name, data FROM vectors WHERE run = ? AND case_id = ?", (run, case_id))
        return {name: np.frombuffer(zlib.decompress(data), dtype=np.float32) for name, data in rows}

    def explanations(self, run: int, kind: str) -> list[Explanation]:
        """The run's recorded explanations of `kind`, by case (none from a database older than schema 5)."""
        if not self._has_table("explanations"):  # an older database opened read-only is not migrated
            return []
        rows = self.db.execute(
            "SELECT case_id, kind, against, dtype, definitions, body FROM explanations WHERE run = ? AND kind = ? "
            "ORDER BY case_id",
            (run, kind),
        )
        return [
            Explanation(case_id, kind, against, dtype, json.loads(definitions), json.loads(body))
            for case_id, kind, against, dtype, definitions, body in rows
        ]

    def _has_table(self, name: str) -> bool:
        try:
            self.db.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchall()
        except Exception:  # noqa: BLE001 - sqlite3 and psycopg name a missing table differently
            return False
        return True

    def vector_cases(self, run: int) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT case_id FROM vectors WHERE run = ? ORDER BY case_id", (run,))
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
    selection = Selection.of(expression)
    return sorted({case for case in cases if selection.matches(case)})
