"""False alarms of both gates on a release that is as good as the old one: release B (release A's recipe, other
seeds) against release A, on the zoo's tiny-mistral, PT and IT releases, every layer, base and instruct models.
`python measurements/release_gate_false_alarms.py`.

Paired gate: release B against release A with the sweep's margins, on 4 disjoint draws of 64 held-out rows per
model (rows 0-63, 64-127, 128-191, 192-255; one look, no extra rows). Stored-expectation gate: each of release B's
SAEs in the sweep's cases (rows 0-63), against release A's stored expectations. A gate raises a false alarm on an
(id, model) when any of spliced CE, KL and EV is not passed.
"""

from dataclasses import replace

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.execution.executor import CaseExecutor
from sae_bench.expectations.case_files import SHIPPED_EXPECTATIONS
from sae_bench.expectations.rules import compare, read_bundle
from sae_bench.gates.release import JUDGED, paired_release_gate, sweep_plan

DRAWS, ROWS = (0, 64, 128, 192), 64


def stored_gate_alarms(kind: str, margins: dict | None = None) -> tuple[int, int]:
    """(flagged, judged) (id, model) pairs of release B's `kind` SAEs against release A's stored values (with
    `margins`: the sweep's margins as the tolerances)."""
    from release_gate_power import with_margins

    registry, executor, flagged, judged = load_registry(SHIPPED_CASES), CaseExecutor(), 0, 0
    for case in registry:
        if case.sweep != "release-a" or not case.sae.startswith(f"zoo:tiny-mistral/release-a-{kind}/"):
            continue
        measured = executor.measure(replace(case, sae=case.sae.replace("release-a", "release-b")))
        expected = read_bundle(case.expectation_path(SHIPPED_EXPECTATIONS))[case.id]
        expected = expected if margins is None else with_margins(expected, margins)
        flagged += bool((compare(expected, measured, list(JUDGED)).verdict == "regression").any())
        judged += 1
    return flagged, judged


def main() -> None:
    plan = sweep_plan(load_registry(SHIPPED_CASES), "release-a")
    print(f"release B against release A; margins {plan.margins}")
    for kind in ("pt", "it"):
        new, old = f"zoo:tiny-mistral/release-b-{kind}", f"zoo:tiny-mistral/release-a-{kind}"
        alarms = []
        for first in DRAWS:
            verdicts = paired_release_gate(plan, new, old, start_rows=ROWS, budget_rows=ROWS, first_row=first)
            by_pair = verdicts.table.groupby(["id", "model"]).verdict.apply(lambda v: bool((v != "ok").any()))
            alarms.append(int(by_pair.sum()))
            rows = f"rows {first}-{first + ROWS - 1}"
            print(f"{kind} paired gate, {rows}: {alarms[-1]} of {len(by_pair)} (id, model) flagged")
            flagged_rows = verdicts.table[verdicts.table.verdict != "ok"]
            if len(flagged_rows):
                print(flagged_rows[["id", "model", "metric", "verdict", "difference"]].to_string(index=False))
        flagged, judged = stored_gate_alarms(kind)
        print(f"{kind} paired gate over {len(DRAWS)} draws: {sum(alarms)} of {len(DRAWS) * len(by_pair)} flagged")
        print(f"{kind} stored-expectation gate, rows 0-63: {flagged} of {judged} (id, model) flagged")
        flagged, judged = stored_gate_alarms(kind, plan.margins)
        print(f"{kind} stored gate with the sweep's margins, rows 0-63: {flagged} of {judged} (id, model) flagged")


if __name__ == "__main__":
    main()
