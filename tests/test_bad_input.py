"""Bad input, tried as a user would: each gives one message that names the file or option and the fix, the exit code
of its class (pytest usage error 4 at collection; the CLI's 2; 130 interrupted), no traceback, and nothing under
expectations/ or in the results database changed or lost (docs/design.md §12).

Suite runs are in-process `pytest.main` calls (a fresh configuration each, as pytester does), so each costs
collection, not a Python start-up."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from sae_bench.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "benchmarks" / "cases"
EXPECTATIONS = ROOT / "expectations"
CASE = "tiny-qwen2/base-sae@chat"


def digest(directory: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        hasher.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return hasher.hexdigest()


@pytest.fixture(scope="module")
def shipped_digest() -> str:
    return digest(EXPECTATIONS)


@pytest.fixture(autouse=True)
def shipped_expectations_untouched(shipped_digest):
    yield
    assert digest(EXPECTATIONS) == shipped_digest, "a bad input changed the shipped expectations/"
    assert not list(EXPECTATIONS.rglob("*.lock")) and not list(EXPECTATIONS.rglob("*.tmp"))


def suite(capsys, *args: str) -> tuple[int, str]:
    """`pytest benchmarks/test_cases.py ARGS` in this process: (exit code, everything it printed)."""
    code = pytest.main([str(ROOT / "benchmarks" / "test_cases.py"), "-p", "no:cacheprovider", "-q", *args])
    out = capsys.readouterr()
    return int(code), out.out + out.err


def assert_clear(text: str, *needles: str) -> None:
    assert "Traceback" not in text and "INTERNALERROR" not in text, text[-3000:]
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text[-3000:]}"


USER_CASE = "my-qwen2/base-sae@chat"
"""The tiny-qwen2 base SAE case in a user's copy of the family file (`--cases-dir` adds to the shipped cases)."""


@pytest.fixture
def cases_copy(tmp_path) -> Path:
    target = tmp_path / "cases"
    target.mkdir()
    text = (CASES / "tiny-qwen2.toml").read_text().replace('family = "tiny-qwen2"', 'family = "my-qwen2"', 1)
    (target / "tiny-qwen2.toml").write_text(text)
    return target


@pytest.fixture
def expectations_copy(tmp_path) -> Path:
    target = tmp_path / "expectations"
    shutil.copytree(EXPECTATIONS / "tiny-qwen2", target / "tiny-qwen2")
    return target


# --- case files --------------------------------------------------------------------------------------------------


def test_a_typo_in_a_case_file_is_one_usage_error_naming_file_field_and_fix(capsys, cases_copy):
    path = cases_copy / "tiny-qwen2.toml"
    path.write_text(path.read_text().replace("batch_size", "batchsize", 1))
    code, text = suite(capsys, f"--cases-dir={cases_copy}", "--no-results", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, str(path), "batchsize", "batchsize → batch_size")


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda t: t + "\n[[case]\n", ["syntax", "fix the TOML syntax"]),
        (
            lambda t: t.replace('"base-sae-ft"]', '"base-sae-fx"]', 1),
            ["'base-sae-fx' is not in [saes]", "did you mean"],
        ),
        (lambda t: t.replace('mask = "rollout"', 'mask = "rolout"', 1), ["unknown mask 'rolout'", "choose from"]),
        (lambda t: t.replace("tokens = ", "tokens = -", 1), ["expected a positive integer"]),
    ],
    ids=["toml-syntax", "unknown-sae", "unknown-mask", "negative-tokens"],
)
def test_other_case_file_mistakes_are_usage_errors(capsys, cases_copy, edit, needles):
    path = cases_copy / "tiny-qwen2.toml"
    edited = edit(path.read_text())
    assert edited != path.read_text() or "syntax" in needles[0]
    path.write_text(edited)
    code, text = suite(capsys, f"--cases-dir={cases_copy}", "--no-results", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, str(path), *needles)


def test_a_missing_cases_folder_is_named(capsys, tmp_path):
    code, text = suite(capsys, f"--cases-dir={tmp_path / 'nope'}", "--no-results", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, "nope: no such folder")


def test_an_unknown_case_id_suggests_close_ones(capsys):
    code, text = suite(capsys, "--case-id", "tiny-qwen2/base-sae@chatt", "--no-results", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, "--case-id", "did you mean tiny-qwen2/base-sae@chat")


# --- expectation files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("corrupt", "needles"),
    [
        (lambda text: text[: len(text) // 2], ["not valid JSON", "truncated"]),
        (
            lambda text: text.replace('"case": "tiny-qwen2/base-sae@chat"', '"case": "tiny-qwen2/chat-sae@chat"'),
            ["sits at the path of"],
        ),
        (
            lambda text: json.dumps(json.loads(text) | {"metrics": {"l0": {"value": "abc"}}}),
            ["metrics.l0.value", "finite number"],
        ),
        (lambda text: "[1, 2]", ["expected a JSON object"]),
        (
            lambda text: json.dumps(json.loads(text) | {"metrics": {"l0": {"value": 1, "abs": -1}}}),
            ["tolerances must be ≥ 0"],
        ),
        (
            lambda text: json.dumps(json.loads(text) | {"metrics": {"l0": {"value": 1, "direction": "up"}}}),
            ["direction"],
        ),
    ],
    ids=["truncated", "other-case", "not-a-number", "not-an-object", "negative-tolerance", "bad-direction"],
)
def test_a_broken_expectation_file_stops_the_run_before_any_case_runs(capsys, expectations_copy, corrupt, needles):
    path = expectations_copy / "tiny-qwen2" / "base-sae@chat.json"
    path.write_text(corrupt(path.read_text()))
    before = path.read_bytes()
    code, text = suite(capsys, "--case-id", CASE, f"--expectations-dir={expectations_copy}", "--no-results")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, str(path), "nothing was run", *needles)
    assert path.read_bytes() == before


def test_an_orphan_expectation_file_warns_and_fails_under_strict(capsys, expectations_copy):
    orphan = expectations_copy / "tiny-qwen2" / "renamed-sae@chat.json"
    shutil.copy(expectations_copy / "tiny-qwen2" / "base-sae@chat.json", orphan)
    args = ("--case-id", CASE, f"--expectations-dir={expectations_copy}", "--no-results", "--collect-only")
    code, text = suite(capsys, *args)
    assert code == pytest.ExitCode.OK
    assert_clear(text, "OrphanExpectation", "renamed-sae@chat.json")
    code, text = suite(capsys, *args, "--strict-expectations")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, "renamed-sae@chat.json", "belong to no registered case", "--strict-expectations")


# --- options -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--device", "cuda"], ["--device cuda: torch sees no CUDA device", "Drop --device"]),
        (["--device", "banana"], ["--device 'banana' is not a torch device"]),
        (["--update-expectations", "--sae", "zoo:tiny-qwen2/chat-sae"], ["--update-expectations with --sae"]),
        (["--replace-published"], ["--replace-published goes with --update-expectations"]),
    ],
    ids=["cuda-without-gpu", "unknown-device", "update-with-sae", "replace-alone"],
)
def test_option_mistakes_are_usage_errors_before_anything_loads(capsys, args, needles):
    if "--device" in args and "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    code, text = suite(capsys, "--no-results", "--collect-only", *args)
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, *needles)


# --- results databases -------------------------------------------------------------------------------------------


def test_a_results_path_that_is_not_sqlite_is_named_and_left_alone(capsys, tmp_path):
    path = tmp_path / "results.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    code, text = suite(capsys, f"--results={path}", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, str(path), "not an SQLite file", "--results")
    assert path.read_bytes() == before
    assert cli(["report", "--results", str(path), "--out", str(tmp_path / "r")]) == 2
    assert_clear(capsys.readouterr().err, str(path), "not an SQLite file")
    assert path.read_bytes() == before


def test_a_results_path_that_is_a_folder_is_named(capsys, tmp_path):
    code, text = suite(capsys, f"--results={tmp_path}", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, "is a folder; --results takes a file path")


def test_a_foreign_sqlite_file_is_not_taken_for_a_results_database(capsys, tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    assert cli(["compare", "--results", str(path)]) == 2
    assert_clear(capsys.readouterr().err, str(path), "not a results database")


@pytest.fixture
def results(tmp_path) -> Path:
    """A results database with two finished runs of one case and an interrupted third that lost it."""
    import pandas as pd

    from sae_bench.results_store.database import CaseMeasurement, ResultsDB

    path = tmp_path / "results.sqlite"
    db = ResultsDB(path)
    verdicts = pd.DataFrame(
        [{"metric": "l0", "expected": 10.0, "got": 10.0, "threshold": 0.5, "direction": "both", "verdict": "ok"}]
    )
    for status, cases in ((1, ["a/s@m", "a/s@n"]), (0, ["a/s@m", "a/s@n"]), (2, ["a/s@m"])):
        run = db.start_run(selection="", device="cpu", git_commit=None, versions={})
        for case in cases:
            values = {"l0": 10.0, "mse": 1.0}
            db.record(run, CaseMeasurement(case, "reconstruction", values, {}, verdicts, "s", "f", "m", "f", 10))
        db.finish_run(run, status)
    db.close()
    return path


def test_compare_and_history_name_what_exists(capsys, results):
    assert cli(["compare", "--results", str(results), "--run", "999"]) == 2
    assert_clear(capsys.readouterr().err, "no run '999'", "its runs: 1-3, or latest")
    assert cli(["compare", "--results", str(results), "--run", "two"]) == 2
    assert_clear(capsys.readouterr().err, "no run 'two'")
    assert cli(["history", "--results", str(results), "--case", "a/s@m", "--metric", "l00"]) == 2
    assert_clear(capsys.readouterr().err, "no run recorded metric 'l00'", "did you mean l0?", "its metrics: l0, mse")
    assert cli(["history", "--results", str(results), "--case", "a/s@mm", "--metric", "l0"]) == 2
    assert_clear(capsys.readouterr().err, "no run recorded case 'a/s@mm'", "did you mean a/s@m")


def test_compare_refuses_a_partial_run_and_counts_what_vanished(capsys, results):
    before = results.read_bytes()
    assert cli(["compare", "--results", str(results), "--run", "3", "--baseline", "2"]) == 2
    assert_clear(capsys.readouterr().err, "run 3 interrupted", "--allow-partial")
    code = cli(["compare", "--results", str(results), "--run", "3", "--baseline", "2", "--allow-partial"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 vanished (1 cases)" in captured.err and "vanished" in captured.out and "a/s@n" in captured.out
    assert cli(["compare", "--results", str(results), "--run", "2", "--baseline", "1"]) == 0
    capsys.readouterr()
    assert results.read_bytes() == before


def test_report_marks_a_partial_run_and_refuses_a_file_as_its_folder(capsys, results, tmp_path):
    from sae_bench.reports.seed_report import build_report
    from sae_bench.results_store.database import ResultsDB

    target = tmp_path / "report.html"
    target.write_text("keep me")
    assert cli(["report", "--results", str(results), "--out", str(target)]) == 2
    assert_clear(capsys.readouterr().err, "is a file", "name a folder")
    assert target.read_text() == "keep me"
    db = ResultsDB(results, read_only=True)
    with pytest.raises(Exception, match="recorded no case matching"):  # the toy run's cases are not registered
        build_report(db, tmp_path / "r", run=3, cases="no-such")
    assert db.run_status(3) == "interrupted" and db.run_status(2) == "finished"


# --- the CLI's own contract --------------------------------------------------------------------------------------


def test_debug_shows_the_traceback_and_interrupts_exit_130(capsys, results, monkeypatch):
    with pytest.raises(Exception, match="no run '999'"):
        cli(["compare", "--results", str(results), "--run", "999", "--debug"])
    import sae_bench.commands.results

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sae_bench.commands.results, "compare_runs", interrupted)
    assert cli(["compare", "--results", str(results), "--run", "2", "--baseline", "1"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_no_results_database_is_said_plainly(capsys, tmp_path):
    assert cli(["compare", "--results", str(tmp_path / "none.sqlite")]) == 2
    assert_clear(capsys.readouterr().err, "no results database at", "run `pytest benchmarks` first")


# --- the gate's input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("/nonexistent/sae", ["/nonexistent/sae: no such folder", "zoo:FAMILY/NAME"]),
        ("zoo:tiny-qwen2/base-saee", ["cannot load the SAE", "base-saee"]),
    ],
    ids=["missing-folder", "unknown-zoo-sae"],
)
def test_gate_names_an_sae_it_cannot_load(capsys, spec, needles):
    assert cli(["gate", "--sae", spec, "--cases", CASE]) == 2
    assert_clear(capsys.readouterr().err, *needles)


def test_gate_names_a_file_or_a_folder_that_is_not_an_sae(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert cli(["gate", "--sae", str(tmp_path / "notes.txt"), "--cases", CASE]) == 2
    assert_clear(capsys.readouterr().err, "is a file")
    assert cli(["gate", "--sae", str(tmp_path), "--cases", CASE]) == 2
    assert_clear(capsys.readouterr().err, "holds no cfg.json or sae_weights.safetensors")


def test_output_paths_are_checked_before_anything_runs(capsys, tmp_path):
    missing = tmp_path / "no-such-folder" / "gate.md"
    assert cli(["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", CASE, "--table", str(missing)]) == 2
    assert_clear(capsys.readouterr().err, "--table", "does not exist; create it first")
    assert cli(["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", CASE, "--junit", str(tmp_path)]) == 2
    assert_clear(capsys.readouterr().err, "--junit", "is a folder")
    code, text = suite(capsys, f"--verdict-table={missing}", "--no-results", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, "--verdict-table", "does not exist")


@pytest.mark.parametrize(
    ("cases", "needles"),
    [
        ("tiny-qwen2/base-sae@chat and (", ["is not a -k expression"]),
        ("tiny-qwen2/base-sae@chatt", ["selects no case"]),
    ],
    ids=["bad-expression", "no-match"],
)
def test_gate_names_a_selection_it_cannot_use(capsys, cases, needles):
    assert cli(["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", cases]) == 2
    assert_clear(capsys.readouterr().err, *needles)


# --- interrupts --------------------------------------------------------------------------------------------------


class _CtrlC:
    """Presses Ctrl-C as the first item starts."""

    def pytest_runtest_setup(self, item):
        raise KeyboardInterrupt


def test_an_interrupted_run_is_recorded_as_interrupted_and_reported_so(capsys, tmp_path):
    from sae_bench.results_store.database import ResultsDB

    path = tmp_path / "results.sqlite"
    code = pytest.main(
        [
            str(ROOT / "benchmarks" / "test_cases.py"),
            "-p",
            "no:cacheprovider",
            "-q",
            f"--results={path}",
            "--case-id",
            CASE,
        ],
        plugins=[_CtrlC()],
    )
    capsys.readouterr()
    assert code == pytest.ExitCode.INTERRUPTED
    db = ResultsDB(path, read_only=True)
    assert db.run_status(1) == "interrupted"


def test_the_gate_says_interrupted_and_exits_130(capsys):
    from sae_bench.gates.single import GatePlugin, Selection, _verdict
    from sae_bench.suite.runner import Suite, SuiteOptions

    plugin = GatePlugin(Suite(SuiteOptions()), Selection.of(CASE), {CASE})
    assert _verdict(pytest.ExitCode.INTERRUPTED, plugin, "zoo:tiny-qwen2/base-sae", "0" * 64, False) == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err


# --- a case's own settings, found when it runs -------------------------------------------------------------------


def test_a_case_asking_more_rows_than_its_dataset_has_fails_with_the_fix(capsys, cases_copy):
    path = cases_copy / "tiny-qwen2.toml"
    path.write_text(path.read_text().replace("tokens = 16384", "tokens = 99999999", 1))
    code, text = suite(capsys, f"--cases-dir={cases_copy}", "--case-id", USER_CASE, "--no-results", "-k", "ce")
    assert code == pytest.ExitCode.TESTS_FAILED
    assert_clear(text, "bad input: zoo:heldout holds 1274 rows", "lower tokens to at most 163072")
    assert "During handling" not in text


@pytest.mark.full
def test_an_sae_spliced_at_another_hook_than_its_own_needs_a_reason_the_table_shows(capsys, cases_copy, tmp_path):
    path = cases_copy / "tiny-qwen2.toml"
    path.write_text(path.read_text().replace('hook = "blocks.2.hook_resid_pre"', 'hook = "blocks.1.hook_resid_pre"'))
    args = (f"--cases-dir={cases_copy}", "--case-id", USER_CASE, "--no-results", "-k", "reconstruction")
    code, text = suite(capsys, *args)
    assert code == pytest.ExitCode.TESTS_FAILED
    assert_clear(text, "reads blocks.2.hook_resid_pre", "splices it at blocks.1.hook_resid_pre", "hook_mismatch_ok")
    path.write_text(
        path.read_text().replace(
            'hook = "blocks.1.hook_resid_pre"', 'hook = "blocks.1.hook_resid_pre"\nhook_mismatch_ok = "a probe"', 1
        )
    )
    expectations, table = tmp_path / "expectations", tmp_path / "verdicts.csv"
    code, text = suite(capsys, *args, f"--expectations-dir={expectations}")
    assert code == pytest.ExitCode.TESTS_FAILED and "wrote new reconstruction expectations" in text  # first run
    code, text = suite(capsys, *args, f"--expectations-dir={expectations}", f"--verdict-table={table}")
    assert code == pytest.ExitCode.OK, text[-2000:]
    import pandas as pd

    assert set(pd.read_csv(table).hook_mismatch_ok) == {"a probe"}


def test_ray_without_ray_installed_is_said_before_anything_runs(monkeypatch):
    import importlib.util

    from sae_bench.errors import BadInput
    from sae_bench.suite.runner import Suite, SuiteOptions

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(BadInput, match=r"--ray needs Ray: pip install 'sae-transfer-bench\[ray\]'"):
        Suite(SuiteOptions(ray="local"))
