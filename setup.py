"""The wheel carries the suite's shipped data (`sae_bench.shipped`): the case files and the pytest layer, the
expectation files, the zoo and the published references, copied under `sae_bench/_shipped/` at build time, with a
pytest.ini that makes the installed suite run as it does in a checkout. Everything else is in pyproject.toml."""

import shutil
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"benchmarks/cases": "*.toml", "expectations": "**/*", "zoo": "**/*", "references": "**/*"}
PYTEST_LAYER = ("conftest.py", "test_cases.py", "test_claims.py")


def pytest_ini() -> str:
    """The repository's [tool.pytest.ini_options] as the installed suite's pytest.ini, with its options plugin."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    plugins = "-p sae_bench.suite.pytest_options -p no:cacheprovider -p no:benchmark"  # nothing written where it runs
    lines = ["[pytest]", f"addopts = {options['addopts']} {plugins}"]
    for key in ("markers", "filterwarnings"):
        lines += [f"{key} ="] + [f"    {value}" for value in options[key]]
    return "\n".join(lines) + "\n"


class BuildWithShippedData(build_py):
    """build_py, then the shipped folders into the package (not in editable installs: a checkout reads its own)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "sae_bench" / "_shipped"
        shutil.rmtree(target, ignore_errors=True)
        for folder, pattern in SHIPPED.items():
            for path in sorted((ROOT / folder).glob(pattern)):
                if path.is_file() and "__pycache__" not in path.parts:
                    destination = target / path.relative_to(ROOT)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, destination)
        for name in PYTEST_LAYER:
            shutil.copy2(ROOT / "benchmarks" / name, target / "benchmarks" / name)
        (target / "benchmarks" / "pytest.ini").write_text(pytest_ini())


setup(cmdclass={"build_py": BuildWithShippedData})
