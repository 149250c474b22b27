"""Definition versions in expectation files: a value measured under another definition than the code's is stale
(neither passed nor failed; an error under --strict-expectations; --update-expectations measures it again and shows
old → new), files written before versions (format 1) read as version 1 and migrate with no value changed, and a
version that cannot be right is one message naming the file and the metric, with nothing rewritten."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sae_bench.engine.definitions import DEFINITIONS
from sae_bench.expectations import rules as expectations
from sae_bench.expectations.rules import ExpectationError, ExpectationFile, MetricExpectation, read_expectations

ROOT = Path(__file__).resolve().parents[2]
CASE = "tiny-qwen2/base-sae@chat"
LEGACY = ROOT / "tests" / "data" / "cases-3dbf69a" / "expectations"
"""Expectation files as the suite wrote them before definition versions (a case's and a sweep's, at 3dbf69a)."""


@pytest.fixture
def l0_redefined(monkeypatch):
    """This suite as if l0 had been redefined: version 2, version 1 kept in `earlier`."""
    redefined = replace(DEFINITIONS["l0"], version=2, earlier={1: DEFINITIONS["l0"].formula})
    monkeypatch.setitem(DEFINITIONS, "l0", redefined)


def _file(**entry) -> ExpectationFile:
    return ExpectationFile("f/s@m", {"kind": "measured"}, {"l0": MetricExpectation(10.0, "both", 0.5, **entry)})


def test_a_value_of_another_definition_is_stale_not_passed_or_failed(l0_redefined):
    far_off = expectations.compare(_file(version=1), {"l0": 99.0}, ["l0"])
    assert far_off.verdict.tolist() == ["stale"] and far_off.definition.tolist() == ["v1 → v2"]
    assert expectations.compare(_file(version=2), {"l0": 99.0}, ["l0"]).verdict.tolist() == ["regression"]
    assert expectations.compare(_file(version=2), {"l0": 10.1}, ["l0"]).definition.tolist() == ["v2"]


def test_an_update_records_the_current_version_and_shows_the_move(l0_redefined):
    new, diff = expectations.updated(_file(version=1), "f/s@m", {"l0": 10.0}, ["l0"], {"kind": "measured"})
    assert new.metrics["l0"].version == 2  # the same number, measured again under the new definition
    assert diff.to_dict("records") == [{"metric": "l0", "old": 10.0, "new": 10.0, "definition": "v1 → v2"}]
    assert json.loads(new.to_json())["metrics"]["l0"]["version"] == 2
    assert new.metrics["l0"].provenance["replaces"]["version"] == 1


def test_a_new_expectation_takes_the_current_version(l0_redefined):
    assert _file().metrics["l0"].version == 2
    document = json.loads(_file().to_json())
    assert document["format"] == expectations.FORMAT and list(document["metrics"]["l0"])[:2] == ["value", "version"]


def _run_case(target: Path, *extra: str) -> int:
    args = [str(ROOT / "benchmarks" / "test_cases.py"), "-p", "no:cacheprovider", "-q", "--no-results"]
    args += ["--case-id", CASE, "-k", "reconstruction", f"--expectations-dir={target}", *extra]
    return pytest.main(args)


def test_a_run_warns_of_a_stale_value_fails_under_strict_and_update_measures_it_again(tmp_path, capsys, l0_redefined):
    target = tmp_path / "expectations"
    shutil.copytree(ROOT / "expectations" / "tiny-qwen2", target / "tiny-qwen2")
    path = target / "tiny-qwen2" / "base-sae@chat.json"
    before = path.read_bytes()

    assert _run_case(target, "-W", "error::DeprecationWarning") == pytest.ExitCode.OK
    out = capsys.readouterr().out
    assert "StaleExpectation" in out and f"{CASE}: l0 expects" in out and "v1" in out and "defines l0 as v2" in out
    assert "--update-expectations" in out

    assert _run_case(target, "--strict-expectations") == pytest.ExitCode.USAGE_ERROR
    captured = capsys.readouterr()
    assert "stale" in captured.err and "(--strict-expectations)" in captured.err
    assert path.read_bytes() == before  # nothing rewritten

    assert _run_case(target, "--update-expectations") == pytest.ExitCode.OK
    summary = capsys.readouterr().out.split("expectations updated", 1)[1]
    assert "| l0 " in summary and "stale" in summary
    assert read_expectations(path).metrics["l0"].version == 2
    assert _run_case(target, "--strict-expectations") == pytest.ExitCode.OK  # current again
    assert "StaleExpectation" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("entry", "file_format", "message"),
    [
        ({}, 2, "metrics.l0: no version; a format-2 file says which definition"),
        ({"version": 0}, 2, "metrics.l0.version: 0 is not a definition version"),
        ({"version": "1"}, 2, "metrics.l0.version: '1' is not a definition version"),
        ({"version": True}, 2, "metrics.l0.version: True is not a definition version"),
        ({"version": 7}, 2, "metrics.l0.version: 7 is newer than this suite's definition of l0 (version 1)"),
        ({"version": 1}, 1, 'metrics.l0.version: a format-1 file has no versions; add "format": 2'),
        ({"version": 1}, 3, "format 3: written by a newer sae-bench"),
        ({"version": 1}, "2", "format '2': this suite reads formats 1 and 2"),
    ],
)
def test_a_version_that_cannot_be_right_names_the_file_and_metric(tmp_path, entry, file_format, message):
    document = {"case": "f/s@m", "provenance": {}, "metrics": {"l0": {"value": 1.0, "abs": 0.1, **entry}}}
    if file_format != 1:
        document["format"] = file_format
    path = tmp_path / "s@m.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ExpectationError) as raised:
        read_expectations(path)
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_a_metric_no_definition_covers_is_refused(tmp_path):
    path = tmp_path / "s@m.json"
    document = {"case": "f/s@m", "format": 2, "provenance": {}, "metrics": {"l1": {"value": 1.0, "version": 1}}}
    path.write_text(json.dumps(document))
    with pytest.raises(ExpectationError, match=r"metrics\.l1: no metric 'l1' is defined"):
        read_expectations(path)


def test_a_bad_version_stops_the_run_before_any_case_and_rewrites_nothing(tmp_path, capsys):
    target = tmp_path / "expectations"
    shutil.copytree(ROOT / "expectations" / "tiny-qwen2", target / "tiny-qwen2")
    path = target / "tiny-qwen2" / "base-sae@chat.json"
    document = json.loads(path.read_text())
    document["metrics"]["l0"]["version"] = 9
    path.write_text(json.dumps(document))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert _run_case(target, "--update-expectations") == pytest.ExitCode.USAGE_ERROR
    err = capsys.readouterr().err
    assert f"{path}: metrics.l0.version: 9 is newer" in err and "nothing was run" in err
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_format_1_files_read_as_version_1_and_migrate_with_no_value_changed(tmp_path):
    """The case file and the sweep file as 3dbf69a wrote them: read as they are, every value version 1; `sae-bench
    expectations migrate` rewrites them as format 2, adding the version and the format, changing nothing else."""
    folder = tmp_path / "expectations"
    shutil.copytree(LEGACY, folder)
    files = sorted(folder.rglob("*.json"))
    originals = {path: json.loads(path.read_text()) for path in files}
    assert all(expectations.is_legacy(path) for path in files)
    single = read_expectations(folder / "my-family" / "base-sae@instruct.json")
    assert {m.version for m in single.metrics.values()} == {1}
    bundle = expectations.read_bundle(folder / "my-release" / "rel@base.json")
    assert {m.version for file in bundle.values() for m in file.metrics.values()} == {1}

    done = subprocess.run(
        [sys.executable, "-m", "sae_bench.cli", "expectations", "migrate", str(folder)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"{len(files)} of {len(files)} expectation files migrated" in done.stdout

    def without_versions(node):
        if isinstance(node, dict):
            return {k: without_versions(v) for k, v in node.items() if k not in ("format", "version")}
        return node

    for path, original in originals.items():
        migrated = json.loads(path.read_text())
        assert migrated["format"] == 2 and without_versions(migrated) == original
        assert not expectations.is_legacy(path)
    again = subprocess.run(
        [sys.executable, "-m", "sae_bench.cli", "expectations", "migrate", str(folder)], capture_output=True, text=True
    )
    assert f"0 of {len(files)} expectation files migrated" in again.stdout


def test_every_shipped_file_is_format_2_at_the_current_versions():
    """The suite's own files were migrated (no value changed: `git diff` of that commit adds lines only)."""
    for path in sorted((ROOT / "expectations").rglob("*.json")):
        assert not expectations.is_legacy(path), path
        data = json.loads(path.read_text())
        parsed = expectations.read_bundle(path).values() if expectations.is_bundle(data) else [read_expectations(path)]
        for file in parsed:
            for name, metric in file.metrics.items():
                assert metric.version == DEFINITIONS[name].version, (path, name)
