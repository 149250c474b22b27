"""A PostgreSQL server of the test's own: initdb into a temporary folder, pg_ctl start on 127.0.0.1 and a free
port, trust authentication, stopped afterwards. Run as the `postgres` user when the tests run as root (the server
refuses root). Absent binaries skip with the reason, except under CI, which must have them (`.ci/run` installs
them)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields the URL of a fresh server's `postgres` database; the server and its files go at exit. Its folder is
    under the system temp folder (pytest's are private to the user that runs the tests)."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL's initdb / pg_ctl are missing; .ci/run installs them (apt-get install postgresql)")
        pytest.skip("PostgreSQL's initdb / pg_ctl are not installed here (Debian: apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="sae-bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server will not run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, text=True, timeout=120)

    run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=50"
    run(pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
