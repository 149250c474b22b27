"""`sae-bench gate`: run the cases a new SAE replaces, with the new SAE, against their stored expectations.

The claims that relate a selected case run too, with the new SAE in the selected cases and the others as they are.
Exit 0 when every selected case ran, nothing regressed and no claim broke; 1 on a regression or a broken claim (or
an error); 2 on bad usage or input: an SAE that cannot be loaded, an expression that selects no case, or cases that
were all skipped (a gate never passes without running). With `rehearse`, the selected hub cases run on the offline
stand-ins (`sae_bench.rehearsal`): exit 0 means each ran end to end with the SAE; its verdicts are reported, not
judged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


AT = "__at__"


class Selection:
    """`-k` semantics, with `@` allowed in names (pytest's own `-k` rejects it, and case ids contain it)."""

    def __init__(self, expression: str):
        from _pytest.mark.expression import Expression  # pytest's -k parser; public API has no equivalent

        self.expression = Expression.compile(expression.replace("@", AT))

    def matches(self, nodeid: str) -> bool:
        text = nodeid.replace("@", AT).lower()
        return self.expression.evaluate(lambda name, /, **_: name.lower() in text)

    def keeps(self, item, config) -> bool:
        """A case item by its id; a claim item when any case it relates is selected."""
        claim_id = getattr(item, "callspec", None) and item.callspec.params.get("claim_id")
        if not claim_id:
            return self.matches(item.nodeid)
        claim = config._sae_bench_suite.registry.claim(claim_id)
        return any(self.matches(case_id) for case_id in claim.case_ids)

    def pytest_collection_modifyitems(self, config, items) -> None:
        kept = [item for item in items if self.keeps(item, config)]
        dropped = [item for item in items if item not in kept]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@dataclass
class _Outcomes:
    """A pytest plugin counting what happened to the selected items."""

    counts: dict[str, int] = field(default_factory=lambda: {"passed": 0, "failed": 0, "skipped": 0})
    skip_reasons: list[str] = field(default_factory=list)

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1
            if report.outcome == "skipped":
                self.skip_reasons.append(str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else "")


def run_gate(
    sae: str,
    cases: str,
    *,
    junit: str | None = None,
    table: str | None = None,
    rehearse: bool = False,
    benchmarks: Path = BENCHMARKS,
) -> int:
    import pytest

    from sae_bench.sources import load_sae

    try:
        load_sae(sae)
    except Exception as err:  # noqa: BLE001 - any load failure is bad input, reported as such
        print(f"sae-bench gate: cannot load the SAE {sae!r}: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        selection = Selection(cases)
    except Exception as err:  # noqa: BLE001 - pytest's ParseError is private
        print(f"sae-bench gate: --cases {cases!r} is not a -k expression: {err}", file=sys.stderr)
        return EXIT_USAGE
    args = [str(benchmarks / "test_cases.py"), str(benchmarks / "test_claims.py"), "--sae", sae, "--sae-cases", cases]
    args += ["-p", "no:cacheprovider", "-q"]
    args += ["--junitxml", junit] if junit else []
    args += ["--verdict-table", table] if table else []
    args += ["--rehearse", "-m", "hub"] if rehearse else []
    outcomes = _Outcomes()
    code = pytest.main(args, plugins=[selection, outcomes])
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(
            f"sae-bench gate: no case matches -k {cases!r} (`pytest benchmarks --collect-only -q` lists them)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return EXIT_USAGE
    if outcomes.counts["failed"]:
        return EXIT_REGRESSION
    if not outcomes.counts["passed"]:
        reasons = "; ".join(sorted(set(outcomes.skip_reasons))[:3])
        print(f"sae-bench gate: every selected case was skipped, so nothing was checked ({reasons})", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
