"""Expectation files on disk (DESIGN §6, §12): checked before any case runs, each written atomically under a lock
that excludes, never silently lost.

The locks live outside the expectations folder (one per file, under the system temp folder) and are never
unlinked, so two processes cannot both hold one and no `*.lock` is ever left beside the files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

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
    """Replace `path` with `text` in one step: a reader sees the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def orphans(directory: Path, paths_of_cases: Iterable[Path]) -> list[Path]:
    """Expectation files under `directory` that no registered case reads (a case renamed or removed)."""
    known = {path.resolve() for path in paths_of_cases}
    return sorted(p for p in directory.rglob("*.json") if p.resolve() not in known)
