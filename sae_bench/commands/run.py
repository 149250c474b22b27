"""The `run` command: the benchmark suite (`pytest benchmarks ARGS`) wherever the package is, with the suite's exit
codes."""

from __future__ import annotations

import sys

import pytest

from sae_bench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_REGRESSION
from sae_bench.shipped import in_checkout, shipped

PYTEST_EXIT = {0: EXIT_OK, 1: EXIT_REGRESSION, 2: EXIT_INTERRUPTED}
"""pytest's exit codes in the suite's terms; everything else (internal error, usage error, no test selected) is 2."""


def run_suite(pytest_args: list[str]) -> int:
    """`sae-bench run ARGS`: the benchmark suite, wherever the package is (`pytest benchmarks ARGS` in a checkout,
    the installed copy otherwise), with the suite's exit codes."""
    benchmarks = shipped("benchmarks")
    target = [str(benchmarks)]
    if not in_checkout():  # the installed suite's own ini (its options plugin, markers, no cache in the package)
        target += ["-c", str(benchmarks / "pytest.ini"), "--rootdir", str(benchmarks)]
    code = int(pytest.main(target + pytest_args))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("sae-bench run: no test selected (check -k, -m or --case-id)", file=sys.stderr)
    return PYTEST_EXIT.get(code, EXIT_BAD_INPUT)
