"""The paired release gate's power against the stored-expectation gate's, side by side in one run, at one token
budget: the smallest relative noise on the decoder of release A's layer-2 PT SAE that each gate flags.
`python measurements/release_gate_power.py`.

Stored-expectation gate: the perturbed SAE in the sweep's cases (64 rows of 128 tokens, base and instruct models),
judged against `expectations/tiny-mistral/release-a@*.json` (tolerances: 3 standard errors of 8 row subsets).
Paired gate: the perturbed SAE against the unperturbed one on the same 64 rows per model (16 units of 4 rows),
margins of the sweep, and again with the stored files' own tolerances as its margins (the same practical margin
as the stored gate: what pairing alone buys). Last, the stored gate with the sweep's margins as its tolerances: the
two gates at the same practical margin, the one that lets a retrained release pass
(`measurements/release_gate_false_alarms.py`). Both judge spliced CE, KL and EV; a gate "flags" a noise level when
any of them is a regression (the paired gate: not shown non-inferior, i.e. regression or inconclusive at the budget).
"""

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.execution.executor import CaseExecutor
from sae_bench.expectations.case_files import SHIPPED_EXPECTATIONS
from sae_bench.expectations.rules import compare, read_bundle
from sae_bench.gates.release import JUDGED, paired_release_gate, sweep_plan
from sae_bench.sources.loading import load_sae

NOISE = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
SAE_ID, RELEASE = "layer_2", "zoo:tiny-mistral/release-a-pt"


def perturbed(root: Path, noise: float) -> Path:
    sae = load_sae(f"{RELEASE}/{SAE_ID}")
    with torch.no_grad():
        direction = torch.randn(sae.W_dec.shape, generator=torch.Generator().manual_seed(0))
        direction = direction / direction.norm(dim=-1, keepdim=True)
        sae.W_dec.add_(noise * sae.W_dec.norm(dim=-1, keepdim=True) * direction)
    sae.save_model(root / f"noise-{noise}" / SAE_ID)
    return root / f"noise-{noise}"


def with_margins(expected, margins: dict):
    """The stored expectations with each judged metric's tolerance replaced by the sweep's margin (absolute, or a
    fraction of the stored value for "N%")."""
    metrics = dict(expected.metrics)
    for metric, margin in margins.items():
        relative = isinstance(margin, str) and margin.endswith("%")
        tolerance = {"abs": 0.0, "rel": float(margin[:-1]) / 100} if relative else {"abs": float(margin), "rel": 0.0}
        metrics[metric] = replace(metrics[metric], **tolerance)
    return replace(expected, metrics=metrics)


def stored_gate_flags(folder: Path, margins: dict | None = None) -> bool:
    registry = load_registry(SHIPPED_CASES)
    flagged = False
    for model in ("base", "instruct"):
        case = registry.get(f"tiny-mistral/release-a-pt/{SAE_ID}@{model}")
        executor = CaseExecutor()
        measured = executor.measure(replace(case, sae=str(folder / SAE_ID)))
        expected = read_bundle(case.expectation_path(SHIPPED_EXPECTATIONS))[case.id]
        expected = expected if margins is None else with_margins(expected, margins)
        flagged |= bool((compare(expected, measured, list(JUDGED)).verdict == "regression").any())
    return flagged


def stored_tolerances() -> dict[str, float]:
    """The stored files' tolerance of each judged metric for this SAE (the smaller of the two models')."""
    registry, tolerances = load_registry(SHIPPED_CASES), {}
    for model in ("base", "instruct"):
        case = registry.get(f"tiny-mistral/release-a-pt/{SAE_ID}@{model}")
        expected = read_bundle(case.expectation_path(SHIPPED_EXPECTATIONS))[case.id]
        for metric in JUDGED:
            tolerances[metric] = min(tolerances.get(metric, float("inf")), expected.metrics[metric].threshold)
    return tolerances


def main() -> None:
    plan = sweep_plan(load_registry(SHIPPED_CASES), "release-a")
    tight = replace(plan, margins=stored_tolerances())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = root / "baseline" / SAE_ID
        load_sae(f"{RELEASE}/{SAE_ID}").save_model(baseline)
        print(f"relative decoder noise on {RELEASE}/{SAE_ID}; 64 rows of 128 tokens per model for both gates")
        print(f"margins: the sweep's {plan.margins}; the stored tolerances {tight.margins}")
        print(
            f"{'noise':>6}  stored-expectation gate  paired gate  paired, stored tolerances as margins"
            "  stored, sweep margins as tolerances"
        )
        for noise in NOISE:
            folder = perturbed(root, noise)
            paired = paired_release_gate(plan, str(folder), str(baseline.parent), start_rows=64, budget_rows=64)
            paired_flags = bool((paired.table.verdict != "ok").any())
            tight_verdicts = paired_release_gate(
                tight, str(folder), str(baseline.parent), start_rows=64, budget_rows=64
            )
            tight_flags = bool((tight_verdicts.table.verdict != "ok").any())
            flags = (stored_gate_flags(folder), paired_flags, tight_flags, stored_gate_flags(folder, plan.margins))
            said = ["flags" if flagged else "passes" for flagged in flags]
            print(f"{noise:6.3f}  {said[0]:>23}  {said[1]:>11}  {said[2]:>36}  {said[3]:>35}")
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
