"""Checks of option values shared by the command line and the pytest layer: argument types for numeric options (a
value out of range is a usage error naming the option: argparse and pytest both report an `ArgumentTypeError` with
the option's name), and the `--ray` address."""

from __future__ import annotations

import argparse
import math
import re
import socket
from collections.abc import Callable
from pathlib import Path

from sae_bench.errors import BadInput


def _checked(text: str, convert: Callable[[str], float], kind: str, ok: Callable[[float], bool], fix: str):
    """`convert(text)` when it is a `kind` that is `ok`; else the ArgumentTypeError saying why and `fix`."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text} is out of range: {fix}")
    return value


def positive_int(text: str) -> int:
    """A count: 1 or more."""
    return _checked(text, int, "a whole number", lambda v: v >= 1, "give 1 or more")


def gigabytes(text: str) -> float:
    """A memory size in GB: a finite positive number."""
    return _checked(
        text, float, "a number of GB", lambda v: math.isfinite(v) and v > 0, "give a memory size in GB, e.g. 80"
    )


def false_alarm_rate(text: str) -> float:
    """A family-wise false-alarm rate: in (0, 0.5]."""
    return _checked(
        text, float, "a number", lambda v: 0 < v <= 0.5, "a false-alarm rate is in (0, 0.5]; the default is 0.05"
    )


RAY_CONNECT_S = 5.0
"""How long `--ray HOST:PORT` waits for the cluster's port to answer before the run is refused."""
_RAY_ADDRESS = re.compile(r"(?:ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})")


def check_ray_address(address: str) -> None:
    """Refuse, within seconds and before anything loads, a `--ray` value that is not a Ray address or whose port
    does not answer (Ray itself retries an unreachable address for minutes). `local` and `auto` pass."""
    if address in ("local", "auto"):
        return
    match = _RAY_ADDRESS.fullmatch(address)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise BadInput(
            f"--ray {address!r} is not a Ray address: give HOST:PORT (the head's GCS port, e.g. 10.0.0.5:6379), "
            "ray://HOST:PORT (Ray Client), auto (the cluster this machine belongs to), or --ray alone for a local one"
        )
    host, port = match.group(1).strip("[]"), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=RAY_CONNECT_S).close()
    except OSError as err:
        raise BadInput(
            f"--ray {address}: nothing answers at {host}:{port} ({err.strerror or err}). Start the cluster "
            "(`ray start --head`), fix the address, or drop --ray to measure here"
        ) from None


def output_problem(paths: dict[str, str | None]) -> str | None:
    """An output file whose folder is not there (checked before anything runs, not after the run)."""
    for option, path in paths.items():
        if path and not Path(path).absolute().parent.is_dir():
            return f"{option} {path}: the folder {Path(path).absolute().parent} does not exist; create it first"
        if path and Path(path).is_dir():
            return f"{option} {path} is a folder; give a file path"
    return None
