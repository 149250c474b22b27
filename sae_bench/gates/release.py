"""`sae-bench gate --release NEW --baseline OLD --sweep NAME`: a new release against the one it replaces, on the
same tokens in the same passes, judged by paired differences with confidence intervals (docs/design.md §10).

Before anything runs, both releases are checked as the single-SAE gate checks one SAE (`gate.load_checked`,
`gate.replacement_problem`): every SAE loads, its weights are finite and not all zeros, its config's hook is the
sweep's hook for its id (unless the sweep declares `hook_mismatch_ok`), it was trained on the sweep's model family,
and the new SAE of an id has the old one's widths; every problem is named by release and id. Two releases that are
the same (one spec, or equal weights at every shared id) are refused: there is nothing to compare.

Units: the token rows are cut into units of `rows_per_unit` rows; each unit is one shared pass over every SAE of
both releases on each of the sweep's models (one clean forward per unit, each hook's continuations once). Per unit,
per id and model, the new SAE's metric minus the old SAE's on the same rows is one paired difference; its mean over
units, with a one-sided t interval, is judged against the sweep's declared margin (non-inferiority):
- **ok** when the new release is shown not worse than the old by more than the margin;
- **regression** when it is shown worse by more than the margin;
- **inconclusive** otherwise (and whenever the interval is not finite): the gate adds units, up to `budget_rows`,
  and an inconclusive verdict at the budget fails closed.
False alarms over a whole release are controlled: the regression tests of every (id, model, metric) are Holm-adjusted
at `alpha`, and `alpha` is split evenly over the looks the budget allows (Bonferroni alpha spending), so the chance
that any non-regressed SAE of the release is called a regression is at most `alpha`. An id present in only one
release is reported (added / removed); a removed id is a regression unless allowed.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd
import torch
from scipy import stats

from sae_bench.cases.registry import JUDGED, Case, Registry, release_members
from sae_bench.engine.backends import backend_of, torch_dtype
from sae_bench.engine.evaluate import EvalConfig, evaluate_shared
from sae_bench.engine.latent_matching import LatentMatch, match_latents
from sae_bench.errors import BadInput
from sae_bench.gates.single import load_checked, replacement_problem
from sae_bench.source_spec import source_spec
from sae_bench.sources.loading import load_dataset_rows, load_model

REPORTED = ("l0",)
FIRES = "fires"
"""A unit value's per-latent count of the positions it fired on (for the latent diff), beside the metrics."""
"""Reported with its interval, not judged."""
DEFAULTS = {"alpha": 0.05, "rows_per_unit": 4, "start_rows": 32, "budget_rows": 128}
"""The release gate's statistical settings when the command line does not give them."""


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep declares for a paired gate: its models, token set, hook template and margins."""

    name: str
    """`FAMILY/NAME`."""
    models: dict[str, str]
    dataset: str
    context: int
    hook: str
    margins: dict[str, float | str]
    """Per judged metric: an absolute margin, or "N%" of the old SAE's own value (per id and model)."""
    margin_basis: str
    case: Case
    """One of the sweep's cases: what a release's SAE must be able to stand in (its hook set per id)."""

    def hook_at(self, layer: int) -> str:
        return self.hook.format(layer=layer)


def sweep_plan(registry: Registry, name: str) -> SweepPlan:
    """The sweep `name` (`FAMILY/NAME`, or a name one family alone declares), with the margins the gate needs."""
    sweep = registry.sweep(name)
    if not sweep.margins:
        raise BadInput(
            f"{sweep.file}: sweep {sweep.id!r} declares no margins for the paired gate. Add margins = {{ "
            f'ce_spliced = 0.05, kl_spliced = "30%", … }} (metrics from {list(JUDGED)}; a positive number, or a '
            f'percentage of the old SAE\'s value) and margin_basis = "why"'
        )
    cases = registry.sweep_cases(sweep)
    models = {c.model_name: c.model for c in cases}
    first = cases[0]
    return SweepPlan(
        sweep.id, models, first.dataset, first.context, sweep.hook, dict(sweep.margins), sweep.margin_basis, first
    )


@dataclass(frozen=True)
class Release:
    """One release of a paired gate, loaded and checked: per id its SAE's spec, the SAE and the sha256 of its
    weights."""

    option: str
    """How the command line named it: `--release` or `--baseline`."""
    source: str
    specs: dict[str, str]
    saes: dict[str, object]
    sha256: dict[str, str]

    def name(self, sae_id: str) -> str:
        return f"{self.option} {self.source}, id {sae_id}"


def layer_of_id(sae_id: str) -> int:
    match = re.search(r"layer_(\d+)", sae_id)
    if match is None:
        raise BadInput(f"release id {sae_id!r} names no layer_N: the sweep's hook template cannot place it")
    return int(match.group(1))


def _members(source: str, option: str, base: Path) -> tuple[dict[str, str], list[str]]:
    """(id → SAE spec, problems): a release's members, or why it has none."""
    try:
        return dict(release_members(source, base, f"{option} {source}")), []
    except BadInput as err:
        return {}, [str(err)]


def load_releases(plan: SweepPlan, new: str, old: str, base: Path = Path(".")) -> tuple[Release, Release]:
    """Both releases, every SAE loaded and checked (see the module's docstring); a BadInput listing every problem
    (each named by release and id) when one cannot be gated."""
    if _same_source(new, old, base):
        raise BadInput(f"--release and --baseline are both {new}: nothing to compare. Give the release it replaces")
    old_release, old_problems = _load_release(plan, "--baseline", old, base)
    new_release, new_problems = _load_release(plan, "--release", new, base, replaces=old_release)
    problems = new_problems + old_problems
    if problems:
        raise BadInput(f"{len(problems)} problem(s) with the releases, nothing was run:\n  " + "\n  ".join(problems))
    shared = [sae_id for sae_id in old_release.saes if sae_id in new_release.saes]
    if not shared:
        raise BadInput(f"--release {new} and --baseline {old} share no id; nothing to compare")
    if all(new_release.sha256[i] == old_release.sha256[i] for i in shared):
        raise BadInput(
            f"--release {new} and --baseline {old} hold the same weights at every shared id ({len(shared)}): "
            "nothing to compare. Give the release it replaces"
        )
    return new_release, old_release


def _load_release(
    plan: SweepPlan, option: str, source: str, base: Path, replaces: Release | None = None
) -> tuple[Release, list[str]]:
    """One release, each SAE checked as the single-SAE gate checks one (`gate.load_checked`,
    `gate.replacement_problem`) against the sweep's case at its id and the SAE of `replaces` with that id; with the
    problems, each named by release and id."""
    specs, problems = _members(source, option, base)
    saes, hashes = {}, {}
    for sae_id, spec in specs.items():
        what = f"{option} {source}, id {sae_id} ({spec})"
        old_sae = None if replaces is None else replaces.saes.get(sae_id)
        try:
            case = replace(
                plan.case,
                id=f"{plan.name} (id {sae_id})",
                hook=plan.hook_at(layer_of_id(sae_id)),
                sae=replaces.specs[sae_id] if old_sae is not None else plan.case.sae,
            )
        except BadInput as err:
            problems.append(f"{what}: {err}")
            continue
        checked, problem = load_checked(spec, what)
        problem = problem or _prefixed(what, replacement_problem(checked.sae, case, old_sae))
        if problem:
            problems.append(problem)
            continue
        saes[sae_id], hashes[sae_id] = checked.sae, checked.sha256
    return Release(option, source, specs, saes, hashes), problems


def _same_source(new: str, old: str, base: Path) -> bool:
    if new == old:
        return True
    folders = [(base / s).resolve() for s in (new, old) if source_spec(s).is_local]
    return len(folders) == 2 and folders[0] == folders[1]


def _prefixed(what: str, problem: str | None) -> str | None:
    return None if problem is None else f"{what}: {problem}"


@dataclass
class PairedVerdicts:
    """Every (id, model, metric) with its paired difference, interval and verdict; ids in one release only."""

    table: pd.DataFrame
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rows_used: int = 0
    new: Release | None = None
    old: Release | None = None
    latents: dict[str, LatentMatch] = field(default_factory=dict)
    """Per shared id: the old SAE's latents matched to the new one's by decoder cosine (`latent_matching`), a latent
    that never fired on the gate's rows of any model counted dead."""

    def regressed(self, allow_removed: bool = False) -> bool:
        return bool((self.table.verdict != "ok").any()) or (bool(self.removed) and not allow_removed)

    def latent_table(self) -> pd.DataFrame:
        """Per shared id: matched, born and dead latents and the matched cosines' 10th, 50th and 90th percentiles."""
        rows = [{"id": sae_id} | match.summary() for sae_id, match in self.latents.items()]
        return pd.DataFrame(rows)


def unit_values(model, pairs, tokens: torch.Tensor) -> list[dict[str, float | None]]:
    """One shared pass over `tokens` for every (SAE, config) pair: each pair's metrics on these rows, and under
    FIRES each latent's count of firing positions."""
    reports = evaluate_shared(model, pairs, tokens)
    return [
        {name: getattr(report, name) for name in (*JUDGED, *REPORTED)}
        | {FIRES: report.feature_density * report.n_tokens_reconstructed}
        for report in reports
    ]


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
    new: str | Release,
    old: str | Release,
    *,
    rows_per_unit: int = DEFAULTS["rows_per_unit"],
    start_rows: int = DEFAULTS["start_rows"],
    budget_rows: int = DEFAULTS["budget_rows"],
    alpha: float = DEFAULTS["alpha"],
    device: str = "cpu",
    base: Path = Path("."),
    first_row: int = 0,
    dtype: str | None = None,
) -> PairedVerdicts:
    """Judge release `new` against `old` (checked `Release`s, or release sources as a sweep takes them, loaded and
    checked here) on the sweep's models and rows (from `first_row` of the sweep's dataset: another draw of rows), the
    models in `dtype` (None: the sweep's cases' own), both releases' SAEs in float32."""
    dtype = dtype or plan.case.dtype
    check_settings(rows_per_unit=rows_per_unit, start_rows=start_rows, budget_rows=budget_rows, alpha=alpha)
    if isinstance(new, str) or isinstance(old, str):  # sources: loaded and checked here
        new, old = load_releases(plan, getattr(new, "source", new), getattr(old, "source", old), base)
    shared = [sae_id for sae_id in old.saes if sae_id in new.saes]
    looks = 1 + max(0, math.ceil(math.log2(budget_rows / start_rows)))  # the rows double at each look
    alpha_look = alpha / looks  # Bonferroni alpha spending over the looks the budget allows
    units: dict[tuple[str, str], list[dict]] = {}
    fires: dict[tuple[str, str], torch.Tensor] = {}
    rows_used, table = 0, pd.DataFrame()
    models = {label: load_model(spec, device=device, dtype=torch_dtype(dtype)) for label, spec in plan.models.items()}
    for label, model in models.items():
        d_model = backend_of(model).d_model
        wrong = [
            f"{release.name(sae_id)}: it reads d_in={release.saes[sae_id].cfg.d_in}, the model {label} "
            f"({plan.models[label]}) has d_model={d_model}"
            for release in (new, old)
            for sae_id in shared
            if release.saes[sae_id].cfg.d_in != d_model
        ]
        if wrong:
            raise BadInput(f"{len(wrong)} SAE(s) do not fit the sweep's models:\n  " + "\n  ".join(wrong))
    budget = {
        label: load_dataset_rows(plan.dataset, first_row + budget_rows, plan.context, m)[first_row:]
        for label, m in models.items()
    }
    keys = [(which, sae_id) for sae_id in shared for which in ("old", "new")]
    releases = {"old": old, "new": new}
    pairs = [
        (
            releases[which].saes[sae_id].to(device),
            EvalConfig(
                hook=plan.hook_at(layer_of_id(sae_id)),
                batch_size=rows_per_unit,
                progress=False,
                overflow=plan.case.overflow,
            ),
        )
        for which, sae_id in keys
    ]
    while True:
        target = min(budget_rows, start_rows if rows_used == 0 else rows_used * 2)
        for label, model in models.items():
            rows = budget[label][rows_used:target]
            for start in range(0, rows.shape[0], rows_per_unit):
                values = unit_values(model, pairs, rows[start : start + rows_per_unit])
                by_key = dict(zip(keys, values, strict=True))
                for key, value in by_key.items():
                    fires[key] = fires.get(key, 0) + value.pop(FIRES)
                for sae_id in shared:
                    units.setdefault((sae_id, label), []).append(
                        {"old": by_key[("old", sae_id)], "new": by_key[("new", sae_id)]}
                    )
        rows_used = target
        table = judge_units(units, plan, alpha_look)
        if not (table.verdict == "inconclusive").any() or rows_used >= budget_rows:
            break
    latents = {
        sae_id: match_latents(
            old.saes[sae_id].W_dec, new.saes[sae_id].W_dec, old_density=fires[("old", sae_id)],
            new_density=fires[("new", sae_id)],
        )
        for sae_id in shared
    }  # fmt: skip
    added, removed = sorted(set(new.saes) - set(old.saes)), sorted(set(old.saes) - set(new.saes))
    return PairedVerdicts(table, added, removed, rows_used, new, old, latents)


def check_settings(*, rows_per_unit: int, start_rows: int, budget_rows: int, alpha: float) -> None:
    """Refuse statistical settings the gate cannot judge with, naming the option and the fix."""
    for option, value in (("--rows-per-unit", rows_per_unit), ("--start-rows", start_rows), ("--budget-rows",
                          budget_rows)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"{option} {value!r}: give a positive number of rows")
    if not (isinstance(alpha, float | int) and 0 < alpha <= 0.5):
        raise BadInput(f"--alpha {alpha!r}: the false-alarm rate is in (0, 0.5] (default {DEFAULTS['alpha']})")
    if start_rows > budget_rows:
        raise BadInput(f"--start-rows {start_rows} exceeds --budget-rows {budget_rows}: the first look cannot "
                       "use more rows than the budget")  # fmt: skip
    if start_rows < 2 * rows_per_unit:
        raise BadInput(
            f"--start-rows {start_rows} with --rows-per-unit {rows_per_unit} gives fewer than 2 units: an interval "
            "needs at least 2 paired differences. Raise --start-rows or lower --rows-per-unit"
        )


def judge_units(units: dict, plan: SweepPlan, alpha_look: float) -> pd.DataFrame:
    """The verdict of every (id, model, metric) from its units' values ({(id, model): [{"old": …, "new": …}]}), each
    test at `alpha_look`, Holm-adjusted over the release."""
    rows, p_regressions, p_oks = [], [], []
    for (sae_id, model), pairs in units.items():
        for metric, better in JUDGED.items():
            if metric not in plan.margins:
                continue
            diffs = [
                p["new"][metric] - p["old"][metric] for p in pairs if None not in (p["new"][metric], p["old"][metric])
            ]
            if len(diffs) < 2 or not all(math.isfinite(d) for d in diffs):  # never judged: inconclusive
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
    verdicts = [
        "inconclusive" if not _finite(row) else "regression" if r else "ok" if o else "inconclusive"
        for row, r, o in zip(rows, regressed, shown_ok, strict=True)
    ]
    return pd.DataFrame(rows).assign(verdict=verdicts)


def _finite(row: dict) -> bool:
    """Whether a row's difference and interval are numbers: a NaN or infinite interval is never judged."""
    return all(
        isinstance(row.get(k), float | int) and math.isfinite(row[k]) for k in ("difference", "low", "high", "margin")
    )


def _margin(declared: float | str, old_values: Sequence[float]) -> float:
    """An absolute margin, or "N%" of the old SAE's mean value over the units."""
    if isinstance(declared, str):
        return float(declared.rstrip("%")) / 100 * abs(sum(old_values) / len(old_values))
    return float(declared)


def junit_xml(plan: SweepPlan, verdicts: PairedVerdicts, *, allow_removed: bool = False) -> str:
    """The verdicts as JUnit XML: a test per (id, model, metric), failed unless ok, and per removed id; each names
    both SAEs (spec and sha256) in its properties."""
    suite = ElementTree.Element("testsuite", name=f"sae-bench release gate {plan.name}")
    failures = 0

    def case(classname: str, name: str, failure: str | None, sae_id: str) -> None:
        nonlocal failures
        element = ElementTree.SubElement(suite, "testcase", classname=classname, name=name)
        properties = ElementTree.SubElement(element, "properties")
        for release in (verdicts.new, verdicts.old):
            if release is not None and sae_id in release.specs:
                ElementTree.SubElement(
                    properties, "property", name=f"{release.option[2:]}_sae", value=release.specs[sae_id]
                )
                if sae_id in release.sha256:
                    ElementTree.SubElement(
                        properties, "property", name=f"{release.option[2:]}_sae_sha256", value=release.sha256[sae_id]
                    )
        if failure is not None:
            failures += 1
            ElementTree.SubElement(element, "failure", message=failure)

    for row in verdicts.table.itertuples():
        failure = None
        if row.verdict != "ok":
            failure = (
                f"{row.verdict}: difference {row.difference} (interval {getattr(row, 'low', None)} to "
                f"{getattr(row, 'high', None)}), margin {getattr(row, 'margin', None)}"
            )
        case(f"{row.id}@{row.model}", row.metric, failure, row.id)
    for sae_id in verdicts.removed:
        case(sae_id, "present", None if allow_removed else "removed in --release", sae_id)
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
