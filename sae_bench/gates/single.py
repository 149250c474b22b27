"""`sae-bench gate`: run the cases a new SAE replaces, with the new SAE, against their stored expectations, and
fail closed (docs/design.md §12).

The `--cases` expression selects test items (`CASE:GROUP`, '@' allowed); the new SAE replaces the SAE of every case
it selects an item of, and those items run, with the claims that relate a selected case (the other cases as they
are). Before anything runs, each selected case is checked to be one the new SAE can stand in (its hook, width and
model family). After the run the gate proves, from the suite's own record, that every selected item evaluated the
new SAE (its spec and the sha256 of its weights, on every verdict row and JUnit entry).

Exit 0: every selected item ran with the new SAE and held, and so did every claim; 1: a regression or a broken
claim; 2: bad input (an SAE that cannot be loaded or evaluated, a selection that matches no case or cases the SAE
cannot replace, an item that could not run); 130: interrupted. With `rehearse`, the selected hub cases run on the
offline stand-ins (`sae_bench.sources.rehearsal`): exit 0 means each ran end to end with the SAE; its verdicts are
reported, not judged.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sae_bench.cases.registry import SHIPPED_CASES, Registry, cases_selected_by, load_registries
from sae_bench.cases.selection import Selection
from sae_bench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_REGRESSION, BadInput, UnusableSAE
from sae_bench.option_values import output_problem
from sae_bench.shipped import in_checkout, shipped
from sae_bench.source_spec import SCHEMES, source_spec
from sae_bench.sources.checked_sae import CheckedSae, check_sae, sae_fit_problem
from sae_bench.sources.loading import load_sae
from sae_bench.suite.runner import GivenSuite, Suite, SuiteOptions, git_commit

BENCHMARKS = shipped("benchmarks")


@dataclass(eq=False)  # a plugin: hashed by identity
class GatePlugin(GivenSuite):
    """Hands pytest the gate's suite, keeps the selected items (and the claims over their cases), and counts what
    happened to them."""

    selection: Selection
    case_ids: set[str]
    counts: dict[str, int] = field(default_factory=lambda: {"passed": 0, "failed": 0, "skipped": 0})
    skip_reasons: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)

    def keeps(self, item) -> bool:
        params = getattr(item, "callspec", None) and item.callspec.params
        if not params:
            return False
        if "claim_id" in params:
            claim = self.suite.registry.claim(params["claim_id"])
            return any(case_id in self.case_ids for case_id in claim.case_ids)
        case_id, group = params["case_id"], params["group"]
        return case_id in self.case_ids and self.selection.matches(f"{case_id}:{group}")

    def pytest_collection_modifyitems(self, config, items) -> None:
        kept = [item for item in items if self.keeps(item)]
        dropped = [item for item in items if item not in kept]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        self.kept = [
            (i.callspec.params["case_id"], i.callspec.params["group"]) for i in kept if "group" in i.callspec.params
        ]

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1
            if report.outcome == "skipped":
                self.skip_reasons.append(str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else "")


def spec_problem(spec: str) -> str | None:
    """A spec that names a local folder that is not there (or not an SAE folder), said as such."""
    if source_spec(spec).scheme in SCHEMES:
        return None
    path = Path(spec)
    if not path.exists():
        return (
            f"--sae {spec}: no such folder. Give a local SAELens folder (cfg.json + sae_weights.safetensors) or a "
            "spec: zoo:FAMILY/NAME, saelens:RELEASE/ID, hf:ORG/REPO/FOLDER, wandb:ENTITY/PROJECT/NAME:VERSION"
        )
    if not path.is_dir():
        return f"--sae {spec} is a file; an SAE is a folder holding cfg.json and sae_weights.safetensors"
    missing = [name for name in ("cfg.json", "sae_weights.safetensors") if not (path / name).is_file()]
    if missing:
        return f"--sae {spec} holds no {' or '.join(missing)}: not a SAELens SAE folder (SAE.save_model writes one)"
    return None


def untrained_problem(sae) -> str | None:
    """Why an SAE with finite weights (`check_sae`) is still no trained SAE: an encoder or decoder of zeros only
    (every feature dead, its reconstruction the decoder bias)."""
    zero = [name for name in ("W_enc", "W_dec") if not bool(getattr(sae, name).any())]
    if zero:
        return f"its {' and '.join(zero)} {'is' if len(zero) == 1 else 'are'} all zeros: not a trained SAE"
    return None


def load_checked(spec: str, what: str) -> tuple[CheckedSae | None, str | None]:
    """(the SAE at `spec`, loaded and checked, None), or (None, why it cannot be loaded or evaluated), `what` naming
    it in the message."""
    try:
        checked = check_sae(spec)
    except UnusableSAE as err:  # its load failed (the cause), or its weights hold NaN or Inf
        if err.__cause__ is not None:
            return None, f"cannot load {what}: {err.__cause__}"
        return None, f"{what}: it cannot be evaluated: {err.reason}"
    except Exception as err:  # noqa: BLE001 - any load failure is bad input, reported as such
        return None, f"cannot load {what}: {err}"
    problem = untrained_problem(checked.sae)
    return (None, f"{what}: {problem}") if problem else (checked, None)


def replacement_problem(new_sae, case, old_sae=None) -> str | None:
    """Why `new_sae` cannot stand in `case` (whose own SAE is `old_sae`, when it can be loaded here): another hook
    than the case splices at, another input width or dictionary size, another model family."""
    problem = sae_fit_problem(new_sae, case)
    if problem:
        return problem
    trained_on = getattr(new_sae.cfg.metadata, "model_name", None) or ""
    family = _zoo_family(trained_on)
    if family and source_spec(case.model).zoo_family != family:
        return f"the SAE was trained on {trained_on} (zoo family {family}); the case's model is {case.model}"
    if old_sae is None:
        return None
    if _zoo_family(getattr(old_sae.cfg.metadata, "model_name", "") or "") not in (None, family):
        return f"the SAE was trained on {trained_on}; the SAE it would replace on {old_sae.cfg.metadata.model_name}"
    for what, new, old in (
        ("d_in", new_sae.cfg.d_in, old_sae.cfg.d_in),
        ("d_sae", new_sae.cfg.d_sae, old_sae.cfg.d_sae),
    ):
        if new != old:
            return f"its {what} is {new}, the SAE it would replace ({case.sae}) has {what} {old}"
    return None


def _zoo_family(model_name: str) -> str | None:
    return source_spec(model_name).zoo_family


def _locally_loadable(spec: str) -> bool:
    return source_spec(spec).scheme == "zoo" or Path(spec).is_dir()


@dataclass(frozen=True)
class GateRequest:
    """One single-SAE gate run as the command line asked for it: the new SAE, the items it replaces, where the
    verdicts go, and the suite's own run options."""

    sae: str
    cases: str
    junit: str | None = None
    table: str | None = None
    rehearse: bool = False
    """Run the selected hub cases on the stand-ins; the caller has set the rehearsal up (`rehearsal.activate`)."""
    cases_dirs: tuple[Path, ...] = ()
    results: str | None = None
    no_results: bool = False
    ray: str | None = None
    device_memory_gb: float | None = None
    dtype: str | None = None

    def suite_options(self) -> SuiteOptions:
        """The suite's options for this run: every selected case with the new SAE."""
        return SuiteOptions(
            cases_dirs=self.cases_dirs,
            sae_override=self.sae,
            sae_cases=self.cases,
            rehearse=self.rehearse,
            ray=self.ray,
            device_memory=None if self.device_memory_gb is None else self.device_memory_gb * 1e9,
            dtype=self.dtype,
        )


def run_gate(request: GateRequest, *, registry: Registry | None = None, benchmarks: Path = BENCHMARKS) -> int:
    """Run the gate; returns its exit code, having said on stderr why when it is not 0. The new SAE is loaded,
    checked and hashed once, here, and handed to the suite with its options as objects; `registry`: the cases of
    the shipped folder and `request.cases_dirs`, when the caller has read them."""
    sae, cases = request.sae, request.cases
    problem = spec_problem(sae) or output_problem({"--junit": request.junit, "--table": request.table})
    if problem:
        return _say(problem, EXIT_BAD_INPUT)
    checked, problem = load_checked(sae, f"the SAE {sae}")
    if problem:
        return _say(problem, EXIT_BAD_INPUT)
    if registry is None:
        registry = load_registries((SHIPPED_CASES, *request.cases_dirs))
    selected = cases_selected_by(registry, cases)
    if request.rehearse:
        selected = [cid for cid in selected if registry.get(cid).tier == "hub"]
    if not selected:
        close = difflib.get_close_matches(cases, list(registry.cases), n=3, cutoff=0.4)
        hint = (
            f"; close case ids: {', '.join(close)}" if close else " (`pytest benchmarks --collect-only -q` lists them)"
        )
        return _say(f"--cases {cases!r} selects no {'hub ' if request.rehearse else ''}case{hint}", EXIT_BAD_INPUT)
    refused, olds = {}, {}
    for case_id in selected:
        case = registry.get(case_id)
        if case.sae not in olds:  # a family's cases share their SAEs: load each once
            olds[case.sae] = load_sae(case.sae) if _locally_loadable(case.sae) else None
        if why := replacement_problem(checked.sae, case, olds[case.sae]):
            refused[case_id] = why
    if refused:
        lines = "\n".join(f"  {case_id}: {why}" for case_id, why in refused.items())
        return _say(
            f"the SAE {sae} cannot replace the SAE of {len(refused)} of the {len(selected)} selected cases:\n{lines}\n"
            "Narrow --cases to the cases it was trained for",
            EXIT_BAD_INPUT,
        )
    try:
        suite = Suite(request.suite_options(), selection_args=_command_line(request), shipped=registry)
        suite.executor.adopt(checked)
        suite.open_results(request.results, disabled=request.no_results, run_id=None, git_commit=git_commit(benchmarks))
    except BadInput as err:
        return _say(str(err), EXIT_BAD_INPUT)
    plugin = GatePlugin(suite, Selection.of(cases), set(selected))
    code = pytest.main(_pytest_args(request, benchmarks), plugins=[plugin])
    if request.table and code in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        suite.write_table(request.table)
    return _verdict(code, plugin, sae, checked.sha256, request.rehearse)


def _pytest_args(request: GateRequest, benchmarks: Path) -> list[str]:
    """pytest's own arguments (the suite's options travel in the suite object): the test files, its ini outside a
    checkout, JUnit, the hub marker for a rehearsal; nothing cached or benchmarked where it runs."""
    args = [str(benchmarks / "test_cases.py"), str(benchmarks / "test_claims.py")]
    args += ["-p", "no:cacheprovider", "-p", "no:benchmark", "-q"]
    args += [] if in_checkout() else ["-c", str(benchmarks / "pytest.ini"), "--rootdir", str(benchmarks)]
    args += ["--junitxml", request.junit] if request.junit else []
    return args + (["-m", "hub"] if request.rehearse else [])


def _command_line(request: GateRequest) -> str:
    """The gate's selection as the results database records it."""
    dirs = "".join(f" --cases-dir {d}" for d in request.cases_dirs)
    return f"gate --sae {request.sae} --cases {request.cases}{dirs}{' --rehearse' if request.rehearse else ''}"


def _verdict(code, plugin: GatePlugin, sae: str, sha: str, rehearse: bool) -> int:
    """The gate's exit code from what pytest did and what the suite recorded; fails closed."""

    if code == pytest.ExitCode.INTERRUPTED:
        return _say("interrupted (Ctrl-C): the gate did not finish, nothing is vouched for", EXIT_INTERRUPTED)
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return _say(f"pytest stopped with exit {int(code)} before judging (its message is above)", EXIT_BAD_INPUT)
    suite = plugin.suite
    if suite.unusable:
        reasons = sorted(set(suite.unusable.values()))
        return _say(f"bad input, so nothing is vouched for: {'; '.join(reasons)}", EXIT_BAD_INPUT)
    wrong = [
        e for e in suite.evaluated if (e.case, e.group) in set(plugin.kept) and (e.sae, e.sae_sha256) != (sae, sha)
    ]
    rows = suite.verdict_table()
    wrong_rows = rows[(rows.sae != sae) | (rows.sae_sha256 != sha)] if len(rows) else rows
    if wrong or len(wrong_rows):
        names = sorted({f"{e.case}:{e.group} ran {e.sae}" for e in wrong} | set(wrong_rows.case.astype(str)))
        return _say(f"not every selected item evaluated the new SAE ({', '.join(names)}); nothing is vouched for", 2)
    if plugin.counts["failed"]:
        return EXIT_REGRESSION
    ran = {(e.case, e.group) for e in suite.evaluated}
    not_run = [f"{case}:{group}" for case, group in plugin.kept if (case, group) not in ran]
    if not_run:
        reasons = "; ".join(sorted(set(plugin.skip_reasons))[:3])
        return _say(
            f"{len(not_run)} of {len(plugin.kept)} selected items did not run ({', '.join(not_run[:5])}"
            f"{', …' if len(not_run) > 5 else ''}), so the gate cannot pass them: {reasons}",
            EXIT_BAD_INPUT,
        )
    cases = len({case for case, _ in plugin.kept})
    what = "ran end to end on the stand-ins" if rehearse else "ran and held"
    print(f"sae-bench gate: ok: {sae} (sha256 {sha[:16]}…) {what} in {cases} cases ({len(plugin.kept)} items)")
    return EXIT_OK


def _say(message: str, code: int) -> int:
    print(f"sae-bench gate: {message}", file=sys.stderr)
    return code
