"""A Ray cluster of the test's own on 127.0.0.1: a head and a second worker node, each a `ray start` of its own
(separate processes, one CPU each), stopped afterwards. Token authentication on, with a token of the test's own
(`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN`), as Ray's docs ask of clusters started with `ray start`; a driver
connects with the same environment (`ray_env`)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_TOKEN = secrets.token_hex(32)


def ray_env() -> dict[str, str]:
    """The environment of the cluster's processes and of its drivers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "RAY_"))}
    return env | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN}


def _ours(match: bytes = b"") -> list[int]:
    """Pids of this cluster's processes (its token in their environment; another Ray on the machine is not
    touched) whose command line holds `match`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if match in (proc / "cmdline").read_bytes() and (
                f"RAY_AUTH_TOKEN={_TOKEN}".encode() in (proc / "environ").read_bytes()
            ):
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return [pid for pid in pids if pid != os.getpid()]


def running_tasks(name: str) -> list[int]:
    """Pids of this cluster's workers running task `name`."""
    return _ours(f"ray::{name}".encode())


def _stop(pids: list[int]) -> None:
    """Stop this cluster's processes only (`ray stop` would stop every Ray of the user on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3  # then SIGKILL: a test cluster holds nothing worth a longer wait
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            time.sleep(0.1)


@contextmanager
def two_node_cluster() -> Iterator[str]:
    """Yields the head's address (127.0.0.1:PORT) of a running head + worker node."""
    ray = str(Path(sys.executable).with_name("ray"))
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    env, port = ray_env(), _free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]

    def run(*args: str) -> None:
        subprocess.run([ray, *args], env=env, check=True, capture_output=True, text=True, timeout=180)

    try:
        run("start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", *common)
        run("start", f"--address=127.0.0.1:{port}", *common)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(_ours())
        shutil.rmtree(temp, ignore_errors=True)
