"""Options and settings shared by the benchmark suite and the tests."""

import os

from hypothesis import settings

from sae_bench.suite.pytest_options import pytest_addoption  # noqa: F401 - the suite's options, defined in one place

# `dev` for quick local runs; `ci` (more examples, derandomized) is what .ci/run selects.
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", settings.get_profile("ci"), max_examples=150, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
