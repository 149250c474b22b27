"""Where the suite's shipped data lives: the case files, the pytest layer, the expectation files, the zoo and the
published references. In a checkout they are the repository's own folders; in an installed distribution they are
the copies the wheel carries under `sae_bench/_shipped/` (setup.py copies them in at build time), so `sae-bench`
works from any folder after `pip install sae-transfer-bench`.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPOSITORY = PACKAGE.parent
INSTALLED = PACKAGE / "_shipped"
FOLDERS = {
    "benchmarks": "benchmarks",
    "cases": "benchmarks/cases",
    "expectations": "expectations",
    "zoo": "zoo",
    "references": "references",
}
"""Each shipped folder, as a path under the repository root (and under `_shipped/` in a wheel)."""
PYTEST_LAYER = ("conftest.py", "test_cases.py", "test_claims.py")
"""The files of benchmarks/ a wheel carries besides the case files (the suite itself, not the speed benchmarks)."""


def in_checkout() -> bool:
    """True when this package is imported from a clone of the repository (an editable install included)."""
    return (REPOSITORY / "pyproject.toml").is_file() and (REPOSITORY / FOLDERS["cases"]).is_dir()


def shipped(name: str) -> Path:
    """The folder `name` (a key of FOLDERS): the checkout's own, else the installed copy."""
    return (REPOSITORY if in_checkout() else INSTALLED) / FOLDERS[name]
