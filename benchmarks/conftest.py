"""The pytest layer of the suite, kept thin (docs/design.md §3): options → `sae_bench.suite.runner.Suite` (or the
gate's own), its outcomes → pytest's, its errors → one usage error at collection (exit 4, no INTERNALERROR), and the
end-of-run sections."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from sae_bench.cases.registry import Registry
from sae_bench.engine.allocator import keep_freed_memory
from sae_bench.engine.backends import DEFAULT_BACKEND
from sae_bench.errors import BadInput, UnusableSAE
from sae_bench.expectations.case_files import SHIPPED_EXPECTATIONS
from sae_bench.option_values import output_problem
from sae_bench.suite.runner import (
    ExpectationsDigest,
    GivenSuite,
    ItemFailed,
    ItemSkipped,
    ItemXfailed,
    Suite,
    SuiteOptions,
    git_commit,
)


class ImprovedMetric(UserWarning):
    """A metric moved beyond its tolerance in the good direction: the expectation file wants updating."""


class OrphanExpectation(UserWarning):
    """An expectation file that no registered case reads (a case renamed or removed)."""


class StaleExpectation(UserWarning):
    """An expected value measured under another definition of its metric: neither passed nor failed."""


@pytest.fixture(scope="session")
def device(request) -> str:
    return request.config._sae_bench_suite.options.device  # checked when the suite was made


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hook; the gate and an installed suite run without it
def pytest_benchmark_update_machine_info(config, machine_info):
    from importlib.metadata import version

    import sae_lens

    machine_info["torch"] = torch.__version__
    machine_info["sae_lens"] = sae_lens.__version__
    machine_info["transformer_lens"] = version("transformer-lens")
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None


def options_of(config) -> SuiteOptions:
    expectations_dir = config.getoption("--expectations-dir")
    memory = config.getoption("--device-memory", None)
    return SuiteOptions(
        cases_dirs=tuple(Path(d) for d in config.getoption("cases_dir")),
        expectations_dir=Path(expectations_dir) if expectations_dir else None,
        device=config.getoption("--device"),
        update=config.getoption("--update-expectations"),
        replace_published=config.getoption("--replace-published"),
        rehearse=config.getoption("--rehearse", False),
        sae_override=config.getoption("sae", None),
        sae_cases=config.getoption("sae_cases", None),
        strict_expectations=config.getoption("--strict-expectations"),
        ray=config.getoption("--ray", None),
        device_memory=None if memory is None else memory * 1e9,
        backend=config.getoption("--backend", DEFAULT_BACKEND),
        dtype=config.getoption("--dtype", None),
        explain=config.getoption("--explain", False),
    )


def suite_from_options(config, workerinput) -> Suite:
    """The suite of a `pytest benchmarks` run: built from its options, recording into its results database."""
    suite = Suite(options_of(config), selection_args=" ".join(config.invocation_params.args))
    suite.open_results(
        config.getoption("--results"),
        disabled=config.getoption("--no-results") or _shows_information(config),
        run_id=None if workerinput is None else workerinput.get("sae_bench_run"),
        git_commit=git_commit(Path(__file__).parent),
        measures=not config.option.collectonly,
    )
    return suite


@contextmanager
def usage_errors():
    """A BadInput becomes pytest's usage error: one message, exit 4, no traceback."""
    try:
        yield
    except BadInput as err:
        raise pytest.UsageError(str(err)) from None


def pytest_configure(config):
    keep_freed_memory()  # batches reuse freed tensors instead of faulting fresh pages in (engine/allocator.py)
    workerinput = getattr(config, "workerinput", None)
    given = [plugin.suite for plugin in config.pluginmanager.get_plugins() if isinstance(plugin, GivenSuite)]
    with usage_errors():
        if problem := output_problem({"--verdict-table": config.getoption("verdict_table", None)}):
            raise BadInput(problem)
        suite = given[0] if given else suite_from_options(config, workerinput)
    config._sae_bench_suite = suite
    if suite.options.rehearse:
        suite.digest = ExpectationsDigest(suite.options.expectations_dir or SHIPPED_EXPECTATIONS)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # share the cores between xdist workers instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _shows_information(config) -> bool:
    """--help, --version, --markers, --fixtures: pytest shows text and runs nothing: nothing is opened or recorded."""
    option = config.option
    return any(getattr(option, name, False) for name in ("help", "version", "markers", "showfixtures"))


def case_params(registry: Registry):
    """One test item per (case, metric group); one xdist group per family (its models load once per worker)."""
    for case in registry:
        marks = [getattr(pytest.mark, case.tier), pytest.mark.xdist_group(case.family)]
        marks += [pytest.mark.gpu] if case.gpu else []
        marks += [pytest.mark.slow] if case.slow else []
        for group in case.groups:
            yield pytest.param(case.id, group, id=f"{case.id}:{group}", marks=marks)


def claim_params(registry: Registry):
    for claim in registry.claims.values():
        cases = [registry.get(case_id) for case_id in claim.case_ids]
        tier = "zoo" if all(case.tier == "zoo" for case in cases) else "hub"
        marks = [getattr(pytest.mark, tier), pytest.mark.xdist_group(claim.family)]
        marks += [pytest.mark.gpu] if any(case.gpu for case in cases) else []
        marks += [pytest.mark.slow] if any(case.slow for case in cases) else []
        yield pytest.param(claim.id, id=claim.id, marks=marks)


def pytest_generate_tests(metafunc):
    registry = metafunc.config._sae_bench_suite.registry
    if {"case_id", "group"} <= set(metafunc.fixturenames):
        metafunc.parametrize(("case_id", "group"), list(case_params(registry)))
    elif "claim_id" in metafunc.fixturenames:
        metafunc.parametrize("claim_id", list(claim_params(registry)))


@pytest.fixture(scope="session")
def suite(request) -> Suite:
    return request.config._sae_bench_suite


@pytest.fixture
def run_item():
    """Runs one suite check and gives its outcome to pytest."""
    return _run_item


def _run_item(check, record_property=None) -> None:
    """Run one suite check and give its outcome to pytest (outside the except block: no chained traceback). A skip
    records what each case lacks on the item's report, for the run's grouped summary (xdist carries it too)."""
    outcome, message = "passed", None
    try:
        message = check()
    except ItemSkipped as skip:
        outcome, message = "skipped", str(skip)
        for case_id, lacks in skip.lacks.items():
            for lack in lacks if record_property is not None else ():
                record_property("lacks", "\t".join((case_id, lack.prerequisite, lack.why, lack.fix, lack.member)))
    except ItemXfailed as xfail:
        outcome, message = "xfailed", str(xfail)
    except ItemFailed as failure:
        outcome, message = "failed", str(failure)
    except UnusableSAE as err:
        outcome, message = "failed", f"cannot evaluate: {err}"
    except BadInput as err:
        outcome, message = "failed", f"bad input: {err}"
    if outcome == "skipped":
        pytest.skip(message)
    if outcome == "xfailed":
        pytest.xfail(message)
    if outcome == "failed":
        pytest.fail(message, pytrace=False)
    if message:  # passed, but improved beyond tolerance
        warnings.warn(ImprovedMetric(message), stacklevel=2)


def pytest_collection_modifyitems(config, items):
    suite = config._sae_bench_suite
    wanted = set(config.getoption("case_id"))
    with usage_errors():
        for case_id in sorted(wanted):
            try:
                suite.registry.get(case_id)
            except KeyError as err:
                raise BadInput(f"--case-id: {err.args[0]}") from None
    if wanted:
        kept = [item for item in items if _param(item, "case_id") in wanted]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def pytest_collection_finish(session):
    """Before any case runs: check every selected case's expectation file (one usage error listing each file that
    cannot be used), report orphan files, and plan the cases (each model's together, released after its last)."""
    suite = getattr(session.config, "_sae_bench_suite", None)
    if suite is None:
        return
    case_items = [item for item in session.items if _param(item, "case_id") is not None]
    case_ids = [_param(item, "case_id") for item in case_items]
    problems = suite.expectation_problems(case_ids)
    if problems:
        raise pytest.UsageError(
            f"{len(problems)} expectation file(s) cannot be used; nothing was run:\n" + "\n".join(problems)
        )
    stale = suite.stale_expectations(case_ids)
    if stale:
        files = sorted({str(path) for path, _ in stale})
        message = (
            f"{len(stale)} expected value(s) in {len(files)} file(s) were measured under another definition of their "
            "metric than this suite's, so they are stale: neither passed nor failed. Measure them again with "
            "--update-expectations (it shows old → new):\n" + "\n".join(f"{path}: {line}" for path, line in stale)
        )
        if suite.options.strict_expectations:
            raise pytest.UsageError(message + "\n(--strict-expectations)")
        # attributed to the expectation file (pytest's summary names it), not to the line of this hook
        where = files[0] if len(files) == 1 else os.path.commonpath(files)
        warnings.warn_explicit(StaleExpectation(message), StaleExpectation, filename=where, lineno=1)
    _left_over(
        suite,
        suite.stale_temporaries(),
        "temporary file(s) left by an expectation writer that was killed mid-write",
        "Delete them (the next --update-expectations of their file removes them too)",
    )
    _left_over(
        suite,
        suite.orphan_expectations(),
        "expectation file(s) belong to no registered case (renamed or removed?)",
        "Move each to its case's new path, or delete it",
    )
    order = {case_id: i for i, case_id in enumerate(suite.plan(case_ids))}
    positions = [i for i, item in enumerate(session.items) if _param(item, "case_id") is not None]
    ordered = sorted(case_items, key=lambda item: order[_param(item, "case_id")])
    for position, item in zip(positions, ordered, strict=True):
        session.items[position] = item


def _left_over(suite: Suite, paths: list, what: str, fix: str) -> None:
    """Files in the expectation folders that no case owns: a warning, a usage error under --strict-expectations."""
    if not paths:
        return
    message = f"{len(paths)} {what}: {', '.join(str(p) for p in paths)}. {fix}"
    if suite.options.strict_expectations:
        raise pytest.UsageError(message + " (--strict-expectations)")
    warnings.warn_explicit(OrphanExpectation(message), OrphanExpectation, filename=str(paths[0]), lineno=1)


def _param(item, name: str):
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get(name)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist: every worker records into the controller's run."""
    suite = node.config._sae_bench_suite
    if suite.results is not None:
        node.workerinput["sae_bench_run"] = suite.run_id


def rehearsal_problems(suite: Suite) -> list[str]:
    """What a rehearsal must never do: write to expectations/, or load a model more than once."""
    problems = []
    if suite.digest.changed():
        problems.append(f"{suite.digest.directory} changed during the rehearsal")
    problems += [f"{spec} was loaded {n} times" for spec, n in suite.executor.model_loads.items() if n > 1]
    return problems


def pytest_sessionfinish(session, exitstatus):
    suite = getattr(session.config, "_sae_bench_suite", None)
    if suite is None:
        return
    target = session.config.getoption("verdict_table", None)
    if target:
        suite.write_table(target)
    suite.close_remote()
    if suite.results is not None and not hasattr(session.config, "workerinput"):
        if session.exitstatus == pytest.ExitCode.USAGE_ERROR:  # stopped before it ran: it leaves no run behind
            suite.results.forget_run(suite.run_id)
        else:
            suite.results.finish_run(suite.run_id, int(session.exitstatus))
    if suite.options.rehearse:
        suite.problems = rehearsal_problems(suite)
        if suite.problems:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def lacking_summary(reports) -> pd.DataFrame:
    """What the skipped items' cases lack, grouped: per missing prerequisite (a release once, with the number of its
    SAEs), the number of cases it blocks, why, and the one command that gets it; most blocking first."""
    blocked: dict[tuple[str, str, str], tuple[set[str], set[str]]] = {}
    for report in reports:
        for key, value in getattr(report, "user_properties", ()):
            if key == "lacks":
                case_id, prerequisite, why, fix, member = value.split("\t")
                cases, members = blocked.setdefault((prerequisite, why, fix), (set(), set()))
                cases.add(case_id)
                members.update([member] if member else [])
    columns = ["cases", "missing here", "why", "how to get it"]
    rows = []
    for (prerequisite, why, fix), (cases, members) in blocked.items():
        if fix == "fetch":
            families = sorted({case_id.split("/", 1)[0] for case_id in cases})
            fix = f'sae-bench fetch -k "{" or ".join(families)}"'
        what = f"{prerequisite}: {len(members)} SAE{'s' if len(members) > 1 else ''}" if members else prerequisite
        rows.append(dict(zip(columns, (len(cases), what, why, fix), strict=True)))
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["cases", "missing here"], ascending=[False, True])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    suite = getattr(config, "_sae_bench_suite", None)
    if suite is None:
        return
    lacking = lacking_summary(terminalreporter.stats.get("skipped", []))
    if len(lacking):
        terminalreporter.section("what the skipped cases lack here (each item's own reason: -rs)")
        terminalreporter.write_line(lacking.to_markdown(index=False))
    if suite.updates:
        terminalreporter.section("expectations updated (old → new; verdict_before: how the case stood before)")
        terminalreporter.write_line(
            suite.update_diff().to_markdown(index=False, floatfmt=".6g", missingval="undefined")
        )
    cost = suite.executor.cost.table()
    if len(cost) > 1:
        terminalreporter.section(
            "forward passes (FPE: one row through every block; floor: one prefix per model, token set and hook; "
            "per batch the clean and each distinct spliced continuation, per pass each distinct zero-ablated one)"
        )
        terminalreporter.write_line(cost.to_markdown(index=False, floatfmt=".2f"))
    if not suite.options.rehearse:
        return
    terminalreporter.section("hub rehearsal (miniature stand-ins: verdicts show the plumbing, not real numbers)")
    if suite.verdicts:
        table = pd.concat(suite.verdicts, ignore_index=True)
        counts = table.groupby("case").verdict.value_counts().unstack(fill_value=0)
        terminalreporter.write_line(counts.to_markdown())
    if suite.first_run_cases:
        terminalreporter.write_line(
            f"{len(suite.first_run_cases)} hub cases ran end to end with no expectations to compare (no published "
            "numbers; their first real run writes them)"
        )
    if suite.claim_outcomes:
        held = sum(holds for _, holds, _ in suite.claim_outcomes)
        terminalreporter.write_line(
            f"claims run end to end: {len(suite.claim_outcomes)} ({held} hold on the miniatures)"
        )
    for problem in getattr(suite, "problems", []):
        terminalreporter.write_line(f"REHEARSAL FAILED: {problem}", red=True)
