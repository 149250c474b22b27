"""Argument types for numeric options, shared by the command line and the pytest layer: a value out of range is a
usage error naming the option (argparse and pytest both report an `ArgumentTypeError` with the option's name)."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """A count: 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give 1 or more")
    return value


def gigabytes(text: str) -> float:
    """A memory size in GB: a finite positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GB") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} GB is not a memory size: give a positive number, e.g. 80")
    return value


def false_alarm_rate(text: str) -> float:
    """A family-wise false-alarm rate: in (0, 0.5]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"{text} is not a false-alarm rate in (0, 0.5]; the default is 0.05")
    return value
