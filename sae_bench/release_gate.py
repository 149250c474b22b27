"""`sae-bench gate --release NEW --baseline OLD --sweep NAME`: a new release against the one it replaces, on the
same tokens in the same passes, judged by paired differences with confidence intervals (DESIGN §10).

Units: the token rows are cut into units of `rows_per_unit` rows; each unit is one shared pass over every SAE of
both releases on each of the sweep's models (one clean forward per unit, each hook's continuations once). Per unit,
per id and model, the new SAE's metric minus the old SAE's on the same rows is one paired difference; its mean over
units, with a one-sided t interval, is judged against the sweep's declared margin (non-inferiority):
- **ok** when the new release is shown not worse than the old by more than the margin;
- **regression** when it is shown worse by more than the margin;
- **inconclusive** otherwise: the gate adds units, up to `budget_rows`, and an inconclusive verdict at the budget
  fails closed.
False alarms over a whole release are controlled: the regression tests of every (id, model, metric) are Holm-adjusted
at `alpha`, and `alpha` is split evenly over the looks the budget allows (Bonferroni alpha spending), so the chance
that any non-regressed SAE of the release is called a regression is at most `alpha`. An id present in only one
release is reported (added / removed); a removed id is a regression unless allowed.
"""

from __future__ import annotations

import math
import re
import statistics
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from scipy import stats

from sae_bench.cases import Registry, release_members
from sae_bench.errors import BadInput

JUDGED = {"ce_spliced": "lower", "kl_spliced": "lower", "explained_variance": "higher"}
"""The metrics the paired gate judges, and which way is better; L0 is reported with its interval, not judged."""
REPORTED = ("l0",)


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep declares for a paired gate: its models, token set, hook template and margins."""

    name: str
    models: dict[str, str]
    dataset: str
    context: int
    hook: str
    margins: dict[str, float | str]
    """Per judged metric: an absolute margin, or "N%" of the old SAE's own value (per id and model)."""
    margin_basis: str


def sweep_plan(registry: Registry, name: str) -> SweepPlan:
    """The sweep `name` of the registry's case files, with the margins the paired gate needs."""
    case = next((c for c in registry if c.sweep == name), None)
    if case is None:
        sweeps = sorted({c.sweep for c in registry if c.sweep})
        raise BadInput(f"no sweep {name!r}; the sweeps: {', '.join(sweeps) or 'none'}")
    data = tomllib.loads(Path(case.file).read_text())
    declaration = next(s for s in data["sweep"] if s.get("name") == name)
    margins = declaration.get("margins")
    if (
        not isinstance(margins, dict)
        or not set(margins) <= set(JUDGED)
        or not margins
        or not all(
            isinstance(m, int | float) and m > 0 or isinstance(m, str) and re.fullmatch(r"\d+(\.\d+)?%", m)
            for m in margins.values()
        )
    ):
        raise BadInput(
            f"{case.file}: sweep {name!r} declares no usable margins for the paired gate. Add margins = {{ "
            f'ce_spliced = 0.05, kl_spliced = "30%", … }} (metrics from {list(JUDGED)}; a positive number, or a '
            f'percentage of the old SAE\'s value) and margin_basis = "why"'
        )
    sweep_cases = [c for c in registry if c.sweep == name]
    models = {c.model_name: c.model for c in sweep_cases}
    return SweepPlan(
        name, models, case.dataset, case.context, declaration["hook"], margins, declaration.get("margin_basis", "")
    )


@dataclass
class PairedVerdicts:
    """Every (id, model, metric) with its paired difference, interval and verdict; ids in one release only."""

    table: pd.DataFrame
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rows_used: int = 0

    def regressed(self, allow_removed: bool = False) -> bool:
        return bool((self.table.verdict != "ok").any()) or (bool(self.removed) and not allow_removed)


def _layer(sae_id: str) -> int:
    match = re.search(r"layer_(\d+)", sae_id)
    if match is None:
        raise BadInput(f"release id {sae_id!r} names no layer_N: the sweep's hook template cannot place it")
    return int(match.group(1))


def unit_values(model, pairs, tokens: torch.Tensor) -> list[dict[str, float | None]]:
    """One shared pass over `tokens` for every (SAE, config) pair: each pair's metrics on these rows."""
    from sae_bench.evaluate import evaluate_shared

    reports = evaluate_shared(model, pairs, tokens)
    return [{name: getattr(report, name) for name in (*JUDGED, *REPORTED)} for report in reports]


def judge(differences: Sequence[float], margin: float, better: str) -> tuple[float, float, float]:
    """(mean difference new − old, one-sided p of 'worse by more than the margin' being false, and of 'not worse by
    more than the margin' being false): the p-values of the two one-sided t tests, oriented so that 'worse' is
    positive."""
    sign = 1.0 if better == "lower" else -1.0
    worse = [sign * d for d in differences]
    n = len(worse)
    mean = sum(worse) / n
    sd = statistics.stdev(worse) if n > 1 else math.inf
    se = sd / math.sqrt(n) if sd > 0 else 0.0
    if se == 0.0:
        p_regression = 0.0 if mean > margin else 1.0
        p_ok = 0.0 if mean < margin else 1.0
    else:
        t = (mean - margin) / se
        p_regression = float(stats.t.sf(t, n - 1))  # H0: worse by at most the margin
        p_ok = float(stats.t.cdf(t, n - 1))  # H0: worse by more than the margin
    return sign * mean, p_regression, p_ok


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down rejections at family-wise level `alpha`."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


def paired_release_gate(
    plan: SweepPlan,
    new: str,
    old: str,
    *,
    rows_per_unit: int = 4,
    start_rows: int = 32,
    budget_rows: int = 128,
    alpha: float = 0.05,
    device: str = "cpu",
    base: Path = Path("."),
    first_row: int = 0,
) -> PairedVerdicts:
    """Judge release `new` against `old` (release sources as a sweep takes them) on the sweep's models and rows
    (from `first_row` of the sweep's dataset: another draw of rows)."""
    from sae_bench.evaluate import EvalConfig
    from sae_bench.sources import load_dataset_rows, load_model, load_sae

    new_ids = dict(release_members(new, base, f"--release {new}"))
    old_ids = dict(release_members(old, base, f"--baseline {old}"))
    shared = [sae_id for sae_id in old_ids if sae_id in new_ids]
    if not shared:
        raise BadInput(f"--release {new} and --baseline {old} share no id; nothing to compare")
    saes = {
        (which, sae_id): load_sae(ids[sae_id], device=device)
        for which, ids in (("new", new_ids), ("old", old_ids))
        for sae_id in shared
    }
    looks = 1 + max(0, math.ceil(math.log2(budget_rows / start_rows)))  # the rows double at each look
    alpha_look = alpha / looks  # Bonferroni alpha spending over the looks the budget allows
    units: dict[tuple[str, str], list[dict]] = {}
    rows_used, table = 0, pd.DataFrame()
    models = {label: load_model(spec, device=device) for label, spec in plan.models.items()}
    budget = {
        label: load_dataset_rows(plan.dataset, first_row + budget_rows, plan.context, m)[first_row:]
        for label, m in models.items()
    }
    keys = [(which, sae_id) for sae_id in shared for which in ("old", "new")]
    pairs = [
        (saes[key], EvalConfig(hook=plan.hook.format(layer=_layer(key[1])), batch_size=rows_per_unit, progress=False))
        for key in keys
    ]
    while True:
        target = min(budget_rows, start_rows if rows_used == 0 else rows_used * 2)
        for label, model in models.items():
            rows = budget[label][rows_used:target]
            for start in range(0, rows.shape[0], rows_per_unit):
                values = unit_values(model, pairs, rows[start : start + rows_per_unit])
                by_key = dict(zip(keys, values, strict=True))
                for sae_id in shared:
                    units.setdefault((sae_id, label), []).append(
                        {"old": by_key[("old", sae_id)], "new": by_key[("new", sae_id)]}
                    )
        rows_used = target
        table = _verdicts(units, plan, alpha_look)
        if not (table.verdict == "inconclusive").any() or rows_used >= budget_rows:
            break
    return PairedVerdicts(table, sorted(set(new_ids) - set(old_ids)), sorted(set(old_ids) - set(new_ids)), rows_used)


def _verdicts(units: dict, plan: SweepPlan, alpha_look: float) -> pd.DataFrame:
    rows, p_regressions, p_oks = [], [], []
    for (sae_id, model), pairs in units.items():
        for metric, better in JUDGED.items():
            if metric not in plan.margins:
                continue
            diffs = [
                p["new"][metric] - p["old"][metric] for p in pairs if None not in (p["new"][metric], p["old"][metric])
            ]
            if len(diffs) < 2:
                rows.append({"id": sae_id, "model": model, "metric": metric, "units": len(diffs), "difference": None})
                p_regressions.append(1.0)
                p_oks.append(1.0)
                continue
            margin = _margin(plan.margins[metric], [p["old"][metric] for p in pairs if p["old"][metric] is not None])
            mean, p_regression, p_ok = judge(diffs, margin, better)
            sd = statistics.stdev(diffs)
            half = float(stats.t.ppf(1 - alpha_look, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
            rows.append({
                "id": sae_id, "model": model, "metric": metric, "units": len(diffs), "difference": mean,
                "low": mean - half, "high": mean + half, "margin": margin, "better": better,
            })  # fmt: skip
            p_regressions.append(p_regression)
            p_oks.append(p_ok)
    regressed = holm(p_regressions, alpha_look)
    shown_ok = holm(p_oks, alpha_look)
    verdicts = ["regression" if r else "ok" if o else "inconclusive" for r, o in zip(regressed, shown_ok, strict=True)]
    return pd.DataFrame(rows).assign(verdict=verdicts)


def _margin(declared: float | str, old_values: Sequence[float]) -> float:
    """An absolute margin, or "N%" of the old SAE's mean value over the units."""
    if isinstance(declared, str):
        return float(declared.rstrip("%")) / 100 * abs(sum(old_values) / len(old_values))
    return float(declared)
