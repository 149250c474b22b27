"""Argument types for numeric options, shared by the command line and the pytest layer: a value out of range is a
usage error naming the option (argparse and pytest both report an `ArgumentTypeError` with the option's name)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


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
