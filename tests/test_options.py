"""The options the command line and the pytest layer share are declared once (`sae_bench.options`): each reaches
`sae-bench gate` and `pytest benchmarks` with the same flags, type and help, and neither declares its own copy."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sae_bench import cli, options
from sae_bench.suite import pytest_options

ROOT = Path(__file__).resolve().parents[1]
SHARED = (options.SAE, *options.SUITE_RUN)


def gate_parser() -> argparse.ArgumentParser:
    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["gate"]


class Group:
    """Records what pytest's option group is asked to add."""

    def __init__(self):
        self.added: dict[str, dict] = {}

    def addoption(self, *flags, **settings):
        self.added.update({flag: settings for flag in flags})


class Parser:
    def __init__(self):
        self.group = Group()

    def getgroup(self, name):
        return self.group


@pytest.mark.parametrize("option", SHARED, ids=lambda option: option.flags[0])
def test_each_shared_option_reaches_both_with_the_same_settings(option):
    gate = {flag: action for action in gate_parser()._actions for flag in action.option_strings}
    parser = Parser()
    pytest_options.pytest_addoption(parser)
    for flag in option.flags:
        assert gate[flag].help == option.settings["help"]
        assert gate[flag].type is option.settings.get("type")
        assert parser.group.added[flag] == option.settings


def test_neither_layer_declares_a_shared_flag_itself():
    for path in (ROOT / "sae_bench" / "cli.py", ROOT / "sae_bench" / "suite" / "pytest_options.py"):
        text = path.read_text()
        for option in SHARED:
            assert f'"{option.flags[0]}"' not in text, f"{path.name} declares {option.flags[0]} again"


def test_the_markers_are_declared_once_in_pyproject():
    assert "MARKERS" not in (ROOT / "sae_bench" / "suite" / "pytest_options.py").read_text()
    assert "markers = [" in (ROOT / "pyproject.toml").read_text()


def test_a_shared_option_parses_alike_on_the_command_line():
    args = gate_parser().parse_args(["--device-memory", "1.5", "--cases-dir", "mine", "--ray"])
    assert (args.device_memory, args.cases_dir, args.ray) == (1.5, [Path("mine")], "local")
    with pytest.raises(SystemExit):
        gate_parser().parse_args(["--device-memory", "lots"])
