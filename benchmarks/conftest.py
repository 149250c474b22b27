"""Benchmark fixtures and the expectation plugin: heavy objects built once per session, never timed."""

from __future__ import annotations

import fcntl
import os
import warnings
from collections import Counter
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import torch

from sae_bench import expectations
from sae_bench.allocator import keep_freed_memory
from sae_bench.cases import Case, Registry, load_registry
from sae_bench.execution import CaseExecutor

CASES_DIR = Path(__file__).parent / "cases"
EXPECTATIONS_DIR = Path(__file__).parents[1] / "expectations"
SPREAD_SUBSETS = 8


class ImprovedMetric(UserWarning):
    """A metric moved beyond its tolerance in the good direction: the expectation file wants updating."""


@pytest.fixture(scope="session")
def device(request) -> str:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"--device {name} asked for, but torch sees no CUDA device")
    return name


def pytest_benchmark_update_machine_info(config, machine_info):
    from importlib.metadata import version

    import sae_lens

    machine_info["torch"] = torch.__version__
    machine_info["sae_lens"] = sae_lens.__version__
    machine_info["transformer_lens"] = version("transformer-lens")
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None


def scaled_case(case: Case) -> Case:
    """The rehearsal's in-memory scaling of a hub case (imported only when a rehearsal runs)."""
    from sae_bench.rehearsal import scaled_case as scale

    return scale(case)


def registry_for(config) -> Registry:
    """The shipped cases; with --sae, the SAE replaced in every case (or in those --sae-cases selects)."""
    registry = load_registry(CASES_DIR)
    override = config.getoption("sae_override", None)
    if not override:
        return registry
    expression = config.getoption("sae_cases", None)
    if expression is None:
        return registry.with_sae(override)
    from sae_bench.gate import Selection

    return registry.with_sae(override, Selection(expression).matches)


def missing_for(case: Case, device: str) -> str | None:
    """Everything this case lacks here, at once (None: it can run)."""
    from sae_bench.hub import missing

    reasons = (
        ["a CUDA GPU (run with --device cuda on a machine that has one)"]
        if case.gpu and not device.startswith("cuda")
        else []
    )
    for spec in dict.fromkeys(s for s in (case.sae, case.model, case.base_model) if s is not None):
        reasons += missing(spec)
    reasons += missing(case.dataset, dataset=True)
    if not reasons:
        return None
    return f"{case.id} needs " + "; ".join(f"({i}) {reason}" for i, reason in enumerate(reasons, 1))


@contextmanager
def _locked(path: Path):
    """An exclusive lock beside `path`, so pytest-xdist workers updating one file take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    path.with_suffix(".lock").unlink(missing_ok=True)


def measured_provenance(case: Case, executor: CaseExecutor) -> dict:
    from importlib.metadata import version

    tokens = executor.tokens(case)
    n_positions = tokens.tokens.numel() if tokens.position_mask is None else int(tokens.position_mask.sum())
    return {
        "kind": "measured",
        "command": f"pytest benchmarks --case-id '{case.id}' --update-expectations",
        "rows": int(tokens.tokens.shape[0]),
        "positions": n_positions,
        "seed": "none needed: fixed shipped rows, greedy rollouts, deterministic on CPU",
        "versions": {p: version(p) for p in ("sae-transfer-bench", "torch", "sae-lens", "transformer-lens")},
        "date": date.today().isoformat(),
    }


class Suite:
    """Checks one (case, metric group) against its expectation file; collects every verdict of the session."""

    def __init__(self, config):
        self.config = config
        self.registry = registry_for(config)
        self.device = config.getoption("--device")
        self.executor = CaseExecutor(device=self.device)
        self.update = config.getoption("--update-expectations")
        self.replace_published = config.getoption("--replace-published")
        self.rehearse = config.getoption("--rehearse", False)
        self.expectations_dir = Path(config.getoption("--expectations-dir") or EXPECTATIONS_DIR)
        self.verdicts: list[pd.DataFrame] = []
        self.claim_outcomes: list[tuple[str, bool, str]] = []
        self.first_run_cases: set[str] = set()
        self.pending: Counter[str] = Counter()
        if self.rehearse and self.update:
            raise pytest.UsageError("--rehearse never writes expectations: drop --update-expectations")
        if self.replace_published and not self.update:
            raise pytest.UsageError("--replace-published goes with --update-expectations")

    def as_run(self, case: Case) -> Case:
        """The case as this run evaluates it: a hub case scaled down under --rehearse, else as registered."""
        return scaled_case(case) if self.rehearse and case.tier == "hub" else case

    def check(self, case_id: str, group: str) -> None:
        case = self.as_run(self.registry.get(case_id))
        try:
            self._check(case, group)
        finally:
            self.finished(case)

    def _check(self, case: Case, group: str) -> None:
        rehearsed = self.rehearse and case.tier == "hub"
        reason = missing_for(case, self.device)
        if reason:
            if rehearsed:  # a rehearsal that skips proves nothing
                pytest.fail(f"rehearsal: a stand-in is missing: {reason}", pytrace=False)
            pytest.skip(reason)
        measured = self.executor.measure(case)
        names = case.metrics(group)
        path = case.expectation_path(self.expectations_dir)
        if rehearsed and not path.exists():
            from sae_bench.published import NOT_PUBLISHED

            if case.family not in NOT_PUBLISHED:
                pytest.fail(f"rehearsal: {path} is missing and {case.family} is not in NOT_PUBLISHED", pytrace=False)
            self.first_run_cases.add(case.id)  # measured end to end; a first real run writes its expectations
            return
        with _locked(path):
            existing = expectations.read_expectations(path) if path.exists() else None
            uncovered = [n for n in names if existing is None or not existing.covers(n)]
            published = existing is not None and expectations.is_published(existing)
            if (published or rehearsed) and uncovered:
                pytest.fail(
                    f"{path} lists neither a value nor an unchecked reason for {uncovered}; a published file must "
                    "cover every metric of its case's groups (`sae-bench expectations published` writes them)",
                    pytrace=False,
                )
            if self.update and published and not self.replace_published:
                pytest.fail(
                    f"{path} holds published values; a measured run never overwrites them. Add "
                    "--replace-published to replace them anyway (the old values and their source stay in the file)",
                    pytrace=False,
                )
            if self.update or uncovered:
                self._write(case, path, existing, measured, names)
        if uncovered and not self.update:
            pytest.fail(f"wrote new {group} expectations to {path}; review the file and commit it", pytrace=False)
        expected = expectations.read_expectations(path)
        table = expectations.compare(expected, measured, names)
        self.verdicts.append(table.assign(case=case.id, group=group, sae=case.sae))
        if self.results is not None:
            self._record(case, group, measured, table)
        text = expectations.verdict_markdown(table)
        if rehearsed:  # miniatures are not the real models: report the verdicts, fail only on plumbing
            return
        if (table.verdict == "regression").any():
            pytest.fail(f"{case.id} [{group}] regressed against {path}:\n\n{text}\n", pytrace=False)
        if (table.verdict == "improved").any():
            warnings.warn(
                ImprovedMetric(f"{case.id} [{group}] improved beyond tolerance; update {path}:\n{text}"), stacklevel=2
            )

    def plan(self, items) -> None:
        """Order the case items model by model (stable within a model) and tell the executor what will run."""
        case_items = [item for item in items if _param(item, "case_id") is not None]
        if not case_items:
            return
        cases = {}
        for item in case_items:
            case_id = _param(item, "case_id")
            if case_id not in cases:
                cases[case_id] = self.as_run(self.registry.get(case_id))
        first_seen = {}
        for case in cases.values():
            first_seen.setdefault((case.family, case.model), len(first_seen))
        family_order = {}
        for case in cases.values():
            family_order.setdefault(case.family, len(family_order))

        def order(item):
            case = cases[_param(item, "case_id")]
            return family_order[case.family], first_seen[(case.family, case.model)]

        positions = [i for i, item in enumerate(items) if _param(item, "case_id") is not None]
        for position, item in zip(positions, sorted(case_items, key=order), strict=True):
            items[position] = item
        self.pending = Counter(_param(item, "case_id") for item in case_items)
        self.executor.plan(list(cases.values()))

    def finished(self, case: Case) -> None:
        """One item of `case` is done; after its last one the executor may release its models."""
        self.pending[case.id] -= 1
        if self.pending[case.id] == 0:
            self.executor.done(case)

    def check_claim(self, claim_id: str) -> None:
        """Evaluate one claim over its cases' measurements (shared with the case items); print both sides."""
        from sae_bench.claims import judge

        claim = self.registry.claim(claim_id)
        cases = [self.as_run(self.registry.get(case_id)) for case_id in claim.case_ids]
        rehearsed = self.rehearse and any(case.tier == "hub" for case in cases)
        reasons = [reason for case in cases if (reason := missing_for(case, self.device))]
        if reasons:
            if rehearsed:
                pytest.fail(f"rehearsal: a stand-in is missing: {'; '.join(reasons)}", pytrace=False)
            pytest.skip(f"claim {claim.id} relates cases that cannot run here: {'; '.join(reasons)}")
        by_id = {case.id: case for case in cases}
        values, undefined = {}, []
        for term in claim.terms:
            case = by_id[term.case_id]
            value = self.executor.measure(case).get(term.metric)
            if value is None:
                why = self.executor.details(case)[0].get(term.metric, "undefined")
                undefined.append(f"{term} is undefined ({why})")
            values[term] = value
        if undefined:
            pytest.fail(f"claim {claim.id} cannot be decided: {'; '.join(undefined)}", pytrace=False)
        outcome = claim.evaluate(values)
        text = f"{claim.id}: {outcome.explain(values)}\n  source: {claim.source}\n  margin: {claim.margin}"
        self.claim_outcomes.append((claim.id, outcome.holds, text))
        if rehearsed:  # miniatures are not the real models: the claim ran end to end, its verdict is not judged
            return
        verdict, why = judge(claim, outcome)
        if verdict == "xfailed":
            pytest.xfail(why)
        if verdict == "failed":
            pytest.fail(f"{text}\n{why}", pytrace=False)

    def _record(self, case: Case, group: str, measured: dict, table: pd.DataFrame) -> None:
        """Keep what this (case, group) measured in the results database; the case's vectors once a run."""
        from sae_bench.results_db import CaseMeasurement
        from sae_bench.sources import source_fingerprint

        undefined, vectors = self.executor.details(case)
        names = case.metrics(group)
        self.results.record(
            self.run_id,
            CaseMeasurement(
                case.id,
                group,
                {name: measured.get(name) for name in names},
                {name: undefined[name] for name in names if name in undefined},
                table,
                case.sae,
                self.executor.sae_fingerprint(case.sae),
                case.model,
                source_fingerprint(case.model),
                int(measured.get("n_tokens_reconstructed") or measured.get("n_tokens") or 0),
            ),
        )
        if case.id not in self.vectors_recorded:
            self.results.record_vectors(self.run_id, case.id, {k: v.cpu().numpy() for k, v in vectors.items()})
            self.vectors_recorded.add(case.id)

    def open_results(self) -> None:
        """The results database of this run (none for a rehearsal: miniature numbers are not results)."""
        from importlib.metadata import version

        from sae_bench.results_db import ResultsDB, default_path

        self.results, self.run_id, self.vectors_recorded = None, None, set()
        if self.config.getoption("--no-results") or self.rehearse:
            return
        self.results = ResultsDB(self.config.getoption("--results") or default_path())
        workerinput = getattr(self.config, "workerinput", None)
        if workerinput is not None and "sae_bench_run" in workerinput:
            self.run_id = workerinput["sae_bench_run"]
            return
        packages = ("sae-transfer-bench", "torch", "sae-lens", "transformer-lens")
        self.run_id = self.results.start_run(
            selection=" ".join(self.config.invocation_params.args),
            device=self.device,
            git_commit=_git_commit(),
            versions={p: version(p) for p in packages},
        )

    def _write(self, case: Case, path: Path, existing, measured: dict, names) -> None:
        """New values for `names` (tolerances kept); metrics new to the file get the measured spread."""
        new_names = [n for n in names if existing is None or not existing.covers(n)]
        spread = {}
        if new_names:
            subsets = self.executor.measure(case, subsets=SPREAD_SUBSETS)
            for name in new_names:
                spread[name] = expectations.spread_tolerance([s.get(name) for s in subsets], value=measured.get(name))
        new, diff = expectations.updated(
            existing,
            case.id,
            measured,
            names,
            measured_provenance(case, self.executor),
            spread,
            spread_basis=f"3 standard errors from {SPREAD_SUBSETS} disjoint row subsets of this case's tokens",
            replace_published=self.replace_published,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new.to_json())
        if not diff.empty:
            print(f"\n{path}:\n{diff.to_markdown(index=False, missingval='undefined')}")

    def write_table(self, target: str) -> None:
        table = pd.concat(self.verdicts, ignore_index=True) if self.verdicts else pd.DataFrame()
        columns = ["case", "group", "metric", "expected", "got", "threshold", "direction", "verdict", "sae"]
        table = table.reindex(columns=columns)
        if target.endswith(".csv"):
            table.to_csv(target, index=False)
        else:
            Path(target).write_text(expectations.verdict_markdown(table) + "\n")


@pytest.fixture(scope="session")
def suite(request) -> Suite:
    return request.config._sae_bench_suite


def pytest_collection_modifyitems(config, items):
    wanted = set(config.getoption("case_id"))
    for case_id in sorted(wanted):
        try:
            config._sae_bench_suite.registry.get(case_id)
        except KeyError as err:
            raise pytest.UsageError(f"--case-id: {err.args[0]}") from None
    if wanted:
        kept = [item for item in items if _param(item, "case_id") in wanted]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def pytest_collection_finish(session):
    """Plan the selected cases: each model's cases run together (shared passes; the model is released after its
    last case), and the executor learns which cases to evaluate together."""
    suite = getattr(session.config, "_sae_bench_suite", None)
    if suite is not None:
        suite.plan(session.items)


def _param(item, name: str):
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get(name)


def _git_commit() -> str | None:
    import subprocess

    try:
        run = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    except OSError:
        return None
    return run.stdout.strip() or None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist: every worker records into the controller's run."""
    suite = node.config._sae_bench_suite
    if suite.results is not None:
        node.workerinput["sae_bench_run"] = suite.run_id


def pytest_configure(config):
    keep_freed_memory()  # batches reuse freed tensors instead of faulting fresh pages in (sae_bench/allocator.py)
    config._sae_bench_suite = Suite(config)
    config._sae_bench_suite.open_results()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # share the cores between xdist workers instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def expectations_digest(directory: Path) -> str:
    """One sha256 over every file under `directory` (names and bytes), to prove a run wrote nothing there."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix != ".lock"):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def pytest_sessionstart(session):
    suite = getattr(session.config, "_sae_bench_suite", None)
    if suite is not None and suite.rehearse:
        suite.digest_before = expectations_digest(suite.expectations_dir)


def rehearsal_problems(suite: Suite) -> list[str]:
    """What a rehearsal must never do: write to expectations/, or load a model more than once."""
    problems = []
    if expectations_digest(suite.expectations_dir) != suite.digest_before:
        problems.append(f"{suite.expectations_dir} changed during the rehearsal")
    problems += [f"{spec} was loaded {n} times" for spec, n in suite.executor.model_loads.items() if n > 1]
    return problems


def pytest_sessionfinish(session, exitstatus):
    suite = getattr(session.config, "_sae_bench_suite", None)
    target = session.config.getoption("verdict_table", None)
    if suite is not None and target:
        suite.write_table(target)
    if suite is not None and suite.results is not None and not hasattr(session.config, "workerinput"):
        suite.results.finish_run(suite.run_id, int(session.exitstatus))
    if suite is not None and suite.rehearse:
        suite.problems = rehearsal_problems(suite)
        if suite.problems:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    suite = getattr(config, "_sae_bench_suite", None)
    if suite is None:
        return
    cost = suite.executor.cost.table()
    if len(cost) > 1:
        terminalreporter.section(
            "forward passes (FPE: one row through every block; floor: one prefix per model, token set and hook, "
            "and per batch the clean, each distinct spliced and each distinct zero-ablated continuation)"
        )
        terminalreporter.write_line(cost.to_markdown(index=False, floatfmt=".2f"))
    if not suite.rehearse:
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
