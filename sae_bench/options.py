"""Options the command line and the pytest layer share, each declared once: its flags and argparse settings, added
by `add_options` to an `argparse` parser (`parser.add_argument`) or a pytest option group (`group.addoption`), which
take the same keywords (pytest-benchmark's `add_*_options(addoption)` pattern)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_bench.option_values import gigabytes
from sae_bench.precision import DTYPES


@dataclass(frozen=True)
class Option:
    """One option: its flags and the keywords argparse and pytest's addoption both accept."""

    flags: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def add_to(self, add: Callable[..., object], **changes: Any) -> None:
        """Declare it with `add` (`add_argument` or `addoption`); `changes` adjust a setting for one command."""
        add(*self.flags, **(self.settings | changes))


SAE = Option(
    ("--sae",),
    dict(
        metavar="SPEC",
        help="the SAE to evaluate instead of each selected case's own: saelens:RELEASE/ID, hf:ORG/REPO/FOLDER, "
        "wandb:ENTITY/PROJECT/NAME:VERSION, zoo:FAMILY/NAME, or a local SAELens folder",
    ),
)
CASES_DIR = Option(
    ("--cases-dir",),
    dict(
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a folder of your own case files (*.toml), added to the shipped ones (repeatable); its expectation "
        "files live in its expectations/ subfolder",
    ),
)
RESULTS = Option(
    ("--results",),
    dict(
        metavar="PATH|URL",
        help="the results database: an SQLite file or a postgresql:// store (default: $SAE_BENCH_RESULTS, else "
        ".sae-bench/results.sqlite)",
    ),
)
NO_RESULTS = Option(("--no-results",), dict(action="store_true", help="record nothing in the results database"))
RAY = Option(
    ("--ray",),
    dict(
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="measure on a Ray cluster (its address, e.g. ray://head:10001 or auto); alone, a local Ray on 127.0.0.1",
    ),
)
DEVICE_MEMORY = Option(
    ("--device-memory",),
    dict(
        type=gigabytes,
        metavar="GB",
        help="memory a shared pass may fill, in GB (default: the device's): the SAEs of a pass that would not fit "
        "are split over passes, as `sae-bench plan --gpu-memory` plans them",
    ),
)
DTYPE = Option(
    ("--dtype",),
    dict(
        choices=DTYPES,
        default=None,
        help="run every selected case's models in this precision instead of the one its case declares (default: "
        "the case's, else float32); the SAE runs in float32 either way. Judged against the expectations as they "
        "are: a precision check (README: Precision)",
    ),
)
EXPLAIN = Option(
    ("--explain",),
    dict(
        action="store_true",
        help="also record why each transfer case fails, from the same passes: every metric per token class, and the "
        "features of its SAE that broke from the same SAE on its own model when that case runs too (`sae-bench "
        "report` shows them; README: Why a transfer fails)",
    ),
)
SUITE_RUN = (CASES_DIR, RESULTS, NO_RESULTS, RAY, DEVICE_MEMORY, DTYPE)
"""What both the suite (pytest) and the single-SAE gate take about where cases, results and measurements live."""


def add_options(add: Callable[..., object], options: Iterable[Option]) -> None:
    """Declare each of `options` with `add`."""
    for option in options:
        option.add_to(add)
