"""The release gates compared fairly: the paired gate's false-alarm rate over 21 disjoint draws of held-out rows, and
both gates' power at margins that give them the same false-alarm rate on a release as good as the old one.
`python measurements/release_gate_equal_false_alarms.py` (about 10 minutes on 2 CPU cores).

Releases: the zoo's tiny-mistral release B (release A's recipe, other seeds) against release A, PT and IT, every
layer, base and instruct models (the sweep `tiny-mistral/release-a`, its margins): 42 draws of a release. Rows:
0-59, 60-119, …, 1200-1259 of `zoo:heldout` (1274 rows), 15 units of 4 rows each, one look (start = budget = 60).

- Paired gate: `judge_units` on each draw, the gate's own statistics (one-sided t intervals, Holm over the release at
  alpha 0.05). On a draw the release gets a regression verdict (what alpha bounds), or fails closed (inconclusive at
  the budget), or passes. Rates carry Clopper-Pearson 95 % intervals.
- Stored-expectation gate: on the same rows, release B's value against release A's (what a stored expectation of
  those rows holds), flagged when worse by more than its tolerance. The value over a draw is the mean of its units'
  values: exactly the pooled value for spliced CE and KL (token means over equal units), the mean of per-unit values
  for explained variance.
- Equal false alarms: each gate's margins scaled by λ (margins = λ × the sweep's); per gate the smallest λ on the grid
  whose failures on release B stay within TARGET_FAILURES of the 42 draws.
- Power at those margins: release A-PT with its layer-2 SAE's decoder perturbed (relative noise, seed 0, as
  `release_gate_power.py`; every other id unchanged), on every draw; per noise level, the share of the 21 draws on
  which each gate fails the release.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from scipy import stats

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.engine.evaluate import EvalConfig
from sae_bench.gates.release import JUDGED, judge_units, layer_of_id, load_releases, sweep_plan, unit_values
from sae_bench.sources.loading import load_dataset_rows, load_model, load_sae

DRAWS, DRAW_ROWS, UNIT_ROWS, ALPHA = 21, 60, 4, 0.05
NOISE = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.8)
LAMBDAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
TARGET_FAILURES = 2
"""The false-alarm rate both gates are set to: at most 2 of the 42 draws (about alpha's 5 %)."""
PERTURBED_ID = "layer_2"


def per_draw_units(plan, saes: dict[str, dict[str, object]], models, rows) -> list[dict]:
    """[draw] → {(id, model): [{"old": values, "new": values}, … one per unit]} for releases {"old": …, "new": …}."""
    keys = [(which, sae_id) for sae_id in saes["old"] for which in ("old", "new")]
    pairs = [
        (saes[which][sae_id], EvalConfig(hook=plan.hook_at(layer_of_id(sae_id)), batch_size=UNIT_ROWS, progress=False))
        for which, sae_id in keys
    ]
    draws = [{} for _ in range(DRAWS)]
    for label, model in models.items():
        for draw in range(DRAWS):
            block = rows[label][draw * DRAW_ROWS : (draw + 1) * DRAW_ROWS]
            for start in range(0, DRAW_ROWS, UNIT_ROWS):
                by_key = dict(zip(keys, unit_values(model, pairs, block[start : start + UNIT_ROWS]), strict=True))
                for sae_id in saes["old"]:
                    unit = {"old": by_key[("old", sae_id)], "new": by_key[("new", sae_id)]}
                    draws[draw].setdefault((sae_id, label), []).append(unit)
    return draws


def scaled(plan, scale: float):
    """The sweep with every margin multiplied by `scale` (a relative margin stays relative)."""
    margins = {
        metric: f"{float(m.rstrip('%')) * scale:g}%" if isinstance(m, str) else float(m) * scale
        for metric, m in plan.margins.items()
    }
    return replace(plan, margins=margins)


def paired_outcome(plan, units: dict) -> str:
    """The release's outcome on one draw: "regression" when any verdict is one (what alpha bounds), "inconclusive"
    when none is but some is inconclusive at the budget (the gate fails closed), else "ok"."""
    verdicts = set(judge_units(units, plan, ALPHA).verdict)
    return "regression" if "regression" in verdicts else "inconclusive" if "inconclusive" in verdicts else "ok"


def stored_alarm(plan, units: dict) -> bool:
    """Any (id, model, metric) whose point difference over the draw is worse than the margin."""
    for pairs in units.values():
        for metric, better in JUDGED.items():
            if metric not in plan.margins:
                continue
            old = sum(p["old"][metric] for p in pairs) / len(pairs)
            new = sum(p["new"][metric] for p in pairs) / len(pairs)
            declared = plan.margins[metric]
            margin = float(declared.rstrip("%")) / 100 * abs(old) if isinstance(declared, str) else float(declared)
            worse = (new - old) if better == "lower" else (old - new)
            if worse > margin:
                return True
    return False


def interval(hits: int, n: int) -> str:
    low, high = stats.binomtest(hits, n).proportion_ci(confidence_level=0.95, method="exact")
    return f"{hits}/{n} = {hits / n:.3f} (95 % CI {low:.3f}-{high:.3f})"


def perturbed_sae(noise: float):
    sae = load_sae(f"zoo:tiny-mistral/release-a-pt/{PERTURBED_ID}")
    with torch.no_grad():
        direction = torch.randn(sae.W_dec.shape, generator=torch.Generator().manual_seed(0))
        direction = direction / direction.norm(dim=-1, keepdim=True)
        sae.W_dec.add_(noise * sae.W_dec.norm(dim=-1, keepdim=True) * direction)
    return sae


def smallest_scale(rates: dict[float, int], target: int) -> float | None:
    return min((s for s, hits in rates.items() if hits <= target), default=None)


def main() -> None:
    plan = sweep_plan(load_registry(SHIPPED_CASES), "release-a")
    models = {label: load_model(spec) for label, spec in plan.models.items()}
    rows = {label: load_dataset_rows(plan.dataset, DRAWS * DRAW_ROWS, plan.context, m) for label, m in models.items()}
    print(f"release B against release A, {DRAWS} draws of {DRAW_ROWS} rows; margins {plan.margins}; alpha {ALPHA}")

    null_draws, release_a_pt = [], None  # (kind, draw units) for release B against A
    for kind in ("pt", "it"):
        new, old = load_releases(plan, f"zoo:tiny-mistral/release-b-{kind}", f"zoo:tiny-mistral/release-a-{kind}")
        draws = per_draw_units(plan, {"old": old.saes, "new": new.saes}, models, rows)
        null_draws += [(kind, units) for units in draws]
        release_a_pt = draws if kind == "pt" else release_a_pt
    n = len(null_draws)
    outcomes = [paired_outcome(plan, units) for _, units in null_draws]
    print(f"(a) paired gate at the sweep's margins, one look at {DRAW_ROWS} rows, over {n} draws:")
    print(f"    a regression verdict (what alpha bounds): {interval(outcomes.count('regression'), n)}")
    print(f"    the gate fails (regression, or inconclusive at the budget): {interval(n - outcomes.count('ok'), n)}")
    for kind in ("pt", "it"):
        mine = [o for (k, _), o in zip(null_draws, outcomes, strict=True) if k == kind]
        counts = f"regression {mine.count('regression')}, inconclusive {mine.count('inconclusive')}"
        print(f"    {kind}: {counts} of {len(mine)}")

    paired_fails = {s: sum(paired_outcome(scaled(plan, s), u) != "ok" for _, u in null_draws) for s in LAMBDAS}
    stored_fails = {s: sum(stored_alarm(scaled(plan, s), u) for _, u in null_draws) for s in LAMBDAS}
    print("    gate failures on release B by margin scale λ (margins = λ × the sweep's):")
    print("      λ      paired                             stored")
    for s in LAMBDAS:
        print(f"      {s:<6} {interval(paired_fails[s], n):<34} {interval(stored_fails[s], n)}")
    target = TARGET_FAILURES
    matched = {"paired": smallest_scale(paired_fails, target), "stored": smallest_scale(stored_fails, target)}
    print(f"    equal false alarms (at most {target} of {n} draws): paired λ = {matched['paired']}, ", end="")
    print(f"stored λ = {matched['stored']}")

    print(f"(b) power: release A-PT with {PERTURBED_ID}'s decoder perturbed, share of the {DRAWS} draws flagged")
    print("    noise  paired          stored")
    a_layer = {PERTURBED_ID: load_sae(f"zoo:tiny-mistral/release-a-pt/{PERTURBED_ID}")}
    for noise in NOISE:
        changed = per_draw_units(plan, {"old": a_layer, "new": {PERTURBED_ID: perturbed_sae(noise)}}, models, rows)
        draws = []
        for draw, units in enumerate(release_a_pt):  # every other id of release A unchanged: new = old
            release = {key: [{"old": u["old"], "new": u["old"]} for u in pairs] for key, pairs in units.items()}
            draws.append(release | changed[draw])
        flagged = {
            "paired": sum(paired_outcome(scaled(plan, matched["paired"]), u) != "ok" for u in draws),
            "stored": sum(stored_alarm(scaled(plan, matched["stored"]), u) for u in draws),
        }
        print(f"    {noise:<6} {flagged['paired']:>2}/{DRAWS}           {flagged['stored']:>2}/{DRAWS}")


if __name__ == "__main__":
    main()
