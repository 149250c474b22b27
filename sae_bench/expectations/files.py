"""Expectation files on disk (docs/design.md §6, §12): checked before any case runs, each written atomically under a
lock that excludes, never silently lost.

The locks live outside the expectations folder (one per file, under the system temp folder) and are never
unlinked, so two processes cannot both hold one and no `*.lock` is ever left beside the files.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_DIR_ENV = "SAE_BENCH_LOCKS"


def lock_path(path: Path) -> Path:
    """Where the lock of expectation file `path` lives: a name derived from its absolute path."""
    root = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "sae_bench-locks")
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]}.lock"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of `path` (pytest-xdist workers and parallel runs updating one file take turns)."""
    with FileLock(lock_path(path), preserve_lock_file=True):
        yield


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a reader sees the old file or the new one, never half of either. The
    new file keeps the old one's permissions (a new one gets the umask's); the caller holds `locked(path)`, so any
    temporary file of `path` already there was left by a killed writer and is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in temporaries(path):
        stale.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def temporaries(path: Path) -> list[Path]:
    """The temporary files `write_atomic` makes for `path` that are on disk now."""
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []


def stale_temporaries(directory: Path) -> list[Path]:
    """Temporary files under `directory` left by a writer killed mid-write: their file's lock is free (a live
    writer holds it while its temporary file exists)."""
    stale = []
    for temporary in sorted(directory.rglob(".*.json.*.tmp")):
        target = temporary.parent / (temporary.name[1:].split(".json.", 1)[0] + ".json")
        try:
            with FileLock(lock_path(target), timeout=0, preserve_lock_file=True):
                stale.append(temporary)
        except Timeout:
            continue
    return stale


def orphans(directory: Path, paths_of_cases: Iterable[Path]) -> list[Path]:
    """Expectation files under `directory` that no registered case reads (a case renamed or removed)."""
    known = {path.resolve() for path in paths_of_cases}
    return sorted(p for p in directory.rglob("*.json") if p.resolve() not in known)
