"""The pytest-free Suite (`sae_bench.suite.runner`): measure → judge → record without pytest, each expectation file
read from disk once a run (a sweep's file once for all its cases), and again only under its lock to write it."""

from __future__ import annotations

import shutil

import pytest

from sae_bench.expectations.case_files import SHIPPED_EXPECTATIONS
from sae_bench.expectations.rules import read_bundle
from sae_bench.suite.runner import ItemFailed, Suite, SuiteOptions

SWEEP = "release-a"
PLAIN = "tiny-qwen2/base-sae@chat"


def run(suite: Suite, case_ids: list[str]) -> None:
    """What the pytest layer does with these cases: check their files, plan, then every item."""
    assert suite.expectation_problems(case_ids) == []
    for case_id in suite.plan(case_ids):
        for group in suite.registry.get(case_id).groups:
            suite.check(case_id, group)


@pytest.fixture(scope="module")
def sweep_cases() -> list[str]:
    cases = [case.id for case in Suite(SuiteOptions()).registry if case.sweep == SWEEP]
    return [case_id for case_id in cases if case_id.endswith("@base")][:3]


def test_each_expectation_file_is_read_once_a_run(sweep_cases):
    suite = Suite(SuiteOptions())
    run(suite, [*sweep_cases, PLAIN])
    bundle = suite.case_files.path(suite.registry.get(sweep_cases[0]))
    assert suite.case_files.reads == {bundle: 1, suite.case_files.path(suite.registry.get(PLAIN)): 1}
    assert len(suite.verdicts) == sum(len(suite.registry.get(c).groups) for c in [*sweep_cases, PLAIN])
    assert all((table.verdict == "ok").all() for table in suite.verdicts)


def test_an_update_reads_the_file_again_under_its_lock_and_keeps_the_sweeps_other_cases(tmp_path, sweep_cases):
    expectations = tmp_path / "expectations"
    shutil.copytree(SHIPPED_EXPECTATIONS, expectations)
    suite = Suite(SuiteOptions(expectations_dir=expectations, update=True))
    bundle = suite.case_files.path(suite.registry.get(sweep_cases[0]))
    before = read_bundle(bundle)
    run(suite, sweep_cases[:1])
    groups = len(suite.registry.get(sweep_cases[0]).groups)
    assert suite.case_files.reads[bundle] == 1 + groups  # at collection, then once under the lock per written item
    after = read_bundle(bundle)
    assert {k: v for k, v in after.items() if k != sweep_cases[0]} == {
        k: v for k, v in before.items() if k != sweep_cases[0]
    }  # the sweep's other cases kept
    values = [{name: e.value for name, e in f[sweep_cases[0]].metrics.items()} for f in (before, after)]
    assert values[1] == pytest.approx(values[0], rel=1e-6)  # the same numbers, to float32 rounding


def test_a_file_for_another_case_is_refused_before_anything_runs(tmp_path):
    expectations = tmp_path / "expectations"
    shutil.copytree(SHIPPED_EXPECTATIONS, expectations)
    suite = Suite(SuiteOptions(expectations_dir=expectations))
    other = "tiny-qwen2/chat-sae@chat"
    shutil.copy(suite.case_files.path(suite.registry.get(other)), suite.case_files.path(suite.registry.get(PLAIN)))
    (problem,) = suite.expectation_problems([PLAIN])
    assert f"the file is for {other!r} but sits at the path of {PLAIN!r}" in problem


def test_a_case_without_expectations_writes_them_and_fails_once(tmp_path):
    suite = Suite(SuiteOptions(expectations_dir=tmp_path))
    case = suite.registry.get(PLAIN)
    suite.plan([PLAIN])
    with pytest.raises(ItemFailed, match="wrote new reconstruction expectations"):
        suite.check(PLAIN, "reconstruction")
    assert suite.case_files.read(case).covers("l0")
    suite.check(PLAIN, "reconstruction")  # the second run judges against what the first wrote
