"""Expectation files (docs/design.md §6): read, compare, update; the verdict table.

One JSON file per case: `{"case", "format", "provenance", "metrics": {name: {value, version, dtype, abs, rel,
direction, basis[, provenance]}}}`. `version` is the definition the value was measured under (`sae_bench.engine.
definitions`); a value of another version than the code's is "stale": neither passed nor failed, until
--update-expectations measures it again. `dtype` is the precision the case's models ran in (absent: float32, the only
one before dtypes were recorded; a published file's values are in the paper's, its provenance's `dtype`); a measured
value of another dtype than its case declares is stale too, unless the run itself was told another dtype (--dtype:
then it is judged, a precision check). A file without `format` was written before versions existed (format 1):
every value in it is version 1, and `sae-bench expectations migrate` rewrites it as format 2 with no value changed.
A metric regresses when it moves beyond max(abs, rel·|value|) in the bad `direction` (`higher` is better, `lower` is
better, `both`: any move is a regression); a move beyond it the good way is "improved" (passes; update the file).
A `one_sided` metric reproduces a collapse ("at least this bad"): any value on the bad side of `value` is ok, one
beyond it on the good side is "improved" (the collapse did not reproduce).
`value: null` means the metric is expected to be undefined. Updating rewrites values, never tolerances.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from sae_bench.engine.definitions import DEFINITIONS, current_version
from sae_bench.errors import BadInput
from sae_bench.precision import DEFAULT_DTYPE, RECORDED_BEFORE, dtype_problem

DIRECTIONS = ("higher", "lower", "both")
DEFAULT_DIRECTION: dict[str, str] = {
    "explained_variance": "higher",
    "explained_variance_per_token": "higher",
    "explained_variance_per_token_pooled": "higher",
    "explained_variance_flattened": "higher",
    "mse": "lower",
    "ce_spliced": "lower",
    "ce_delta": "lower",
    "ce_loss_recovered": "higher",
    "ce_loss_recovered_batch_mean": "higher",
    "kl_spliced": "lower",
    "kl_score": "higher",
    "dead_fraction": "lower",
    "activation_similarity_regular_mean": "higher",
    "logit_similarity_regular_mean": "higher",
    "log_density_correlation": "higher",
}
"""Which way is better, for metrics of SAE quality; everything else (clean CE, L0, outlier shares, residual
similarity: properties of the model and the data) is `both`."""

FORMAT = 2
"""2: every metric entry carries the `version` of its definition; 1 (no `format` field): written before versions, so
every value is version 1."""
STALE = "stale"
"""The verdict of a value whose expectation was measured under another definition: neither a pass nor a failure."""
SPREAD_SIGMAS = 3.0
FLOAT_FLOOR_REL = 1e-5
"""Smallest relative tolerance: float32 forward passes on another BLAS differ by about this much."""


class ExpectationError(BadInput):
    """A malformed expectation file; the message names the file and the field."""


@dataclass(frozen=True)
class MetricExpectation:
    value: float | None
    direction: str
    abs: float = 0.0
    rel: float = 0.0
    basis: str = ""
    """Where the tolerance comes from (a measured spread, or why a published value gets this much room)."""
    provenance: Mapping[str, Any] | None = None
    """Per-metric provenance, where it differs from the file's."""
    one_sided: bool = False
    """Check only that the value is at least this bad (a collapsed transfer), in `direction`'s terms."""
    version: int | None = None
    """The definition the value was measured under (None: the current one, filled in by ExpectationFile)."""
    dtype: str | None = None
    """The precision the value was measured in (None: not recorded; `ExpectationFile.dtype_of` says what it means)."""

    def __post_init__(self) -> None:
        if self.one_sided and self.direction == "both":
            raise ValueError("a one-sided expectation needs direction higher or lower")

    @property
    def threshold(self) -> float:
        return max(self.abs, self.rel * abs(self.value)) if self.value is not None else 0.0

    def verdict(self, got: float | None) -> str:
        """ok, improved or regression."""
        if self.value is None:
            return "ok" if got is None else "improved"
        if got is None or not math.isfinite(got):
            return "regression"
        delta = got - self.value
        if self.one_sided:
            worse = delta < 0 if self.direction == "higher" else delta > 0
            return "ok" if worse or abs(delta) <= self.threshold else "improved"
        if abs(delta) <= self.threshold:
            return "ok"
        if self.direction == "both":
            return "regression"
        better = delta > 0 if self.direction == "higher" else delta < 0
        return "improved" if better else "regression"


@dataclass(frozen=True)
class ExpectationFile:
    case: str
    provenance: Mapping[str, Any]
    metrics: dict[str, MetricExpectation] = field(default_factory=dict)
    unchecked: dict[str, str] = field(default_factory=dict)
    """Metrics deliberately not checked, with why (e.g. no spread could be measured for a tolerance)."""

    def __post_init__(self) -> None:
        for name, expectation in self.metrics.items():
            if expectation.version is None:
                self.metrics[name] = replace(expectation, version=current_version(name))

    def covers(self, name: str) -> bool:
        return name in self.metrics or name in self.unchecked

    def dtype_of(self, name: str) -> str:
        """The precision `name`'s value was measured in: its own, else the file's (a paper's: a dtype, or "not
        stated"), else float32 (the only one before dtypes were recorded)."""
        return self.metrics[name].dtype or self.provenance.get("dtype") or RECORDED_BEFORE

    def to_json(self) -> str:
        metrics = {}
        for name, expectation in sorted(self.metrics.items()):
            entry = {k: v for k, v in asdict(expectation).items() if v not in (None, "", 0.0) or k == "value"}
            first = {k: entry.pop(k) for k in ("value", "version", "dtype") if k in entry}  # the value and its terms
            metrics[name] = first | entry
        document = {"case": self.case, "format": FORMAT, "provenance": self.provenance, "metrics": metrics}
        if self.unchecked:
            document["unchecked"] = dict(sorted(self.unchecked.items()))
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _number(path: Path, where: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ExpectationError(f"{path}: {where}: expected a finite number, got {value!r}")
    return float(value)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExpectationError(f"{path}: not valid JSON ({err}); a truncated or hand-edited file?") from err


def read_expectations(path: Path) -> ExpectationFile:
    """Parse and check one expectation file."""
    return parse_expectations(path, _load_json(path))


def is_bundle(data: Any) -> bool:
    """Whether a parsed expectation file is a sweep's (one per sweep and model: format, sweep and cases)."""
    return isinstance(data, dict) and set(data) - {"format"} == {"sweep", "cases"}


def read_bundle(path: Path) -> dict[str, ExpectationFile]:
    """A sweep's expectation file (one per sweep and model): each of its cases' expectations, by case id."""
    data = _load_json(path)
    if not is_bundle(data) or not isinstance(data["cases"], dict):
        raise ExpectationError(f"{path}: a sweep's expectation file is a JSON object with format, sweep and cases")
    file_format = _format(path, data)
    files = {}
    for case_id, document in data["cases"].items():
        if isinstance(document, dict) and "format" not in document:
            document = {**document, "format": file_format}  # the bundle's format holds for each case in it
        files[case_id] = parse_expectations(path, document, inside=f"cases.{case_id}")
        if files[case_id].case != case_id:
            raise ExpectationError(f"{path}: cases.{case_id}.case says {files[case_id].case!r}")
    return files


def bundle_json(sweep: str, files: Mapping[str, ExpectationFile]) -> str:
    """A sweep's expectation file: its cases in id order, each as its own file would hold it."""
    cases = {case_id: json.loads(files[case_id].to_json()) for case_id in sorted(files)}
    for document in cases.values():
        del document["format"]  # said once, for the whole file
    return json.dumps({"format": FORMAT, "sweep": sweep, "cases": cases}, indent=2, ensure_ascii=False) + "\n"


def _format(path: Path, data: Mapping[str, Any]) -> int:
    """A file's format: 1 when it has none (written before versions), else 2; anything else is refused."""
    found = data.get("format", 1)
    if isinstance(found, bool) or found not in (1, FORMAT):
        newer = isinstance(found, int) and not isinstance(found, bool) and found > FORMAT
        why = "written by a newer sae-bench; upgrade it" if newer else f"this suite reads formats 1 and {FORMAT}"
        raise ExpectationError(f"{path}: format {found!r}: {why}")
    return found


def _version(path: Path, where: str, name: str, entry: Mapping[str, Any], file_format: int) -> int:
    """The definition version a metric entry was measured under, checked against the code's definitions."""
    if name not in DEFINITIONS:
        raise ExpectationError(f"{path}: {where}: no metric {name!r} is defined (`sae-bench metrics` lists them)")
    if file_format == 1:
        if "version" in entry:
            raise ExpectationError(f'{path}: {where}.version: a format-1 file has no versions; add "format": 2')
        return 1
    if "version" not in entry:
        raise ExpectationError(
            f"{path}: {where}: no version; a format-2 file says which definition each value was measured under "
            f"(`sae-bench metrics` lists them; {name} is at version {current_version(name)})"
        )
    version, current = entry["version"], current_version(name)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExpectationError(f"{path}: {where}.version: {version!r} is not a definition version (1, 2, …)")
    if version > current:
        raise ExpectationError(
            f"{path}: {where}.version: {version} is newer than this suite's definition of {name} (version "
            f"{current}); the file was written by a newer sae-bench: upgrade it"
        )
    return version


def parse_expectations(path: Path, data: Any, inside: str = "") -> ExpectationFile:
    """Check one case's expectations (`inside`: where they sit in a sweep's file, named in errors)."""
    if inside:
        path = Path(f"{path}: {inside}")
    if not isinstance(data, dict):
        raise ExpectationError(f"{path}: expected a JSON object with case, provenance and metrics")
    for key in ("case", "provenance", "metrics"):
        if key not in data:
            raise ExpectationError(f"{path}: missing top-level field {key!r}")
    unknown = set(data) - {"case", "format", "provenance", "metrics", "unchecked"}
    if unknown:
        raise ExpectationError(f"{path}: unknown top-level fields {sorted(unknown)}")
    file_format = _format(path, data)
    unchecked = data.get("unchecked", {})
    if not isinstance(unchecked, dict) or not all(isinstance(v, str) for v in unchecked.values()):
        raise ExpectationError(f'{path}: unchecked: expected a table of metric = "reason"')
    if not isinstance(data["metrics"], dict) or not isinstance(data["provenance"], dict):
        raise ExpectationError(f"{path}: metrics and provenance must be JSON objects")
    if not isinstance(data["case"], str):
        raise ExpectationError(f"{path}: case: expected the case id as a string, got {data['case']!r}")
    metrics = {}
    for name, entry in data["metrics"].items():
        where = f"metrics.{name}"
        if not isinstance(entry, dict) or "value" not in entry:
            raise ExpectationError(f"{path}: {where}: expected a table with value, direction and abs or rel")
        unknown = set(entry) - ENTRY_FIELDS
        if unknown:
            raise ExpectationError(f"{path}: {where}: unknown fields {sorted(unknown)}")
        direction = entry.get("direction", DEFAULT_DIRECTION.get(name, "both"))
        if direction not in DIRECTIONS:
            raise ExpectationError(f"{path}: {where}.direction: {direction!r} is not one of {list(DIRECTIONS)}")
        tolerance = {k: _number(path, f"{where}.{k}", entry.get(k, 0.0)) for k in ("abs", "rel")}
        if min(tolerance.values()) < 0:
            raise ExpectationError(f"{path}: {where}: tolerances must be ≥ 0")
        one_sided = entry.get("one_sided", False)
        if not isinstance(one_sided, bool) or (one_sided and direction == "both"):
            raise ExpectationError(f"{path}: {where}.one_sided: true or false, and true needs direction higher/lower")
        if not isinstance(entry.get("basis", ""), str) or not isinstance(entry.get("provenance") or {}, dict):
            raise ExpectationError(f"{path}: {where}: basis is a string and provenance a JSON object")
        if "dtype" in entry and (problem := dtype_problem(entry["dtype"], f"{where}.dtype")):
            raise ExpectationError(f"{path}: {problem}")
        metrics[name] = MetricExpectation(
            value=_number(path, f"{where}.value", entry["value"], allow_none=True),
            direction=direction,
            basis=entry.get("basis", ""),
            provenance=entry.get("provenance"),
            one_sided=one_sided,
            version=_version(path, where, name, entry, file_format),
            dtype=entry.get("dtype"),
            **tolerance,
        )
    return ExpectationFile(data["case"], data["provenance"], metrics, unchecked)


def is_legacy(path: Path) -> bool:
    """Whether an expectation file (a case's or a sweep's) was written before versions (format 1)."""
    data = _load_json(path)
    return isinstance(data, dict) and "format" not in data


ENTRY_FIELDS = {"value", "version", "dtype", "direction", "abs", "rel", "basis", "provenance", "one_sided"}
VERDICT_COLUMNS = ["metric", "expected", "got", "threshold", "direction", "definition", "dtype", "verdict"]


def staleness(expected: ExpectationFile, name: str, *, declared: str, run: str) -> str | None:
    """Why the expected value of `name` cannot judge a value measured in `run` for a case declared in `declared`
    (None: it can): measured under another definition of its metric, or (a measured value, not a paper's) in another
    dtype than the case declares, when the run is in the declared one (a run told another dtype is a precision
    check, judged against the values as they are)."""
    expectation, current = expected.metrics[name], current_version(name)
    if expectation.version != current:
        return f"under definition v{expectation.version}; this suite defines {name} as v{current}"
    measured_in = expected.dtype_of(name)
    if not is_published(expected) and measured_in != declared and run == declared:
        return f"measured in {measured_in}; the case now runs in {declared}"
    return None


def compare(
    expected: ExpectationFile,
    measured: Mapping[str, float | None],
    names: Sequence[str],
    *,
    declared: str = DEFAULT_DTYPE,
    run: str = DEFAULT_DTYPE,
) -> pd.DataFrame:
    """The verdict table for the metrics in `names` that the file holds, measured in `run` for a case declared in
    `declared`. `definition` is the version both sides share ("v1"), or "v1 → v2" where the expectation was
    measured under an older one; `dtype` the precision both share, or "float32 → bfloat16"; a `staleness` gives
    verdict `stale`."""
    rows = []
    for name in names:
        if name not in expected.metrics:
            continue
        expectation = expected.metrics[name]
        got, current, measured_in = measured.get(name), current_version(name), expected.dtype_of(name)
        stale = staleness(expected, name, declared=declared, run=run)
        rows.append(
            {
                "metric": name,
                "expected": expectation.value,
                "got": got,
                "threshold": expectation.threshold,
                "direction": expectation.direction + (", at least this bad" if expectation.one_sided else ""),
                "definition": _moved(expectation.version, current),
                "dtype": run if measured_in == run else f"{measured_in} → {run}",
                "verdict": STALE if stale else expectation.verdict(got),
            }
        )
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def is_published(expected: ExpectationFile) -> bool:
    """True when the file's values come from a paper (docs/design.md §6: a measured run never overwrites them)."""
    return expected.provenance.get("kind") == "published"


def spread_tolerance(subset_values: Sequence[float | None], *, value: float | None) -> float | None:
    """3 standard errors of a value measured on all the tokens, from its values on k disjoint subsets of them.

    The subsets' sample std estimates the spread at 1/k of the tokens, so the full sample's is std/√k. None when
    the metric is undefined on some subset (no spread can be measured); never below the float32 floor.
    """
    if value is None or any(v is None for v in subset_values) or len(subset_values) < 2:
        return None
    spread = SPREAD_SIGMAS * statistics.stdev(subset_values) / math.sqrt(len(subset_values))
    return max(spread, FLOAT_FLOOR_REL * abs(value), 1e-12)


def updated(
    existing: ExpectationFile | None,
    case: str,
    measured: Mapping[str, float | None],
    names: Sequence[str],
    provenance: Mapping[str, Any],
    spread: Mapping[str, float | None] | None = None,
    spread_basis: str = "",
    *,
    replace_published: bool = False,
    dtype: str = DEFAULT_DTYPE,
) -> tuple[ExpectationFile, pd.DataFrame]:
    """New values for `names` (tolerances kept; new metrics take the measured spread) and the diff table.

    A published value is replaced only with `replace_published`. Every replaced value is kept: the metric carries
    the measured provenance and, under `replaces`, the value and source it replaced. Every value written records
    `dtype`, the precision it was measured in.
    """
    published = existing is not None and is_published(existing)
    if published and not replace_published:
        raise ExpectationError(f"{existing.case}: the file holds published values; a measured run never replaces them")
    metrics = dict(existing.metrics) if existing else {}
    unchecked = dict(existing.unchecked) if existing else {}
    diff = []
    for name in names:
        got = measured.get(name)
        if name in metrics:
            old = metrics[name]
            source = old.provenance
            current = current_version(name)
            old_dtype = existing.dtype_of(name)
            if old.value != got or published or old.version != current or old_dtype != dtype:
                diff.append({"metric": name, "old": old.value, "new": got, "definition": _moved(old.version, current)})
                # the value it replaces and that value's own source (one level: no chain of replacements)
                former = {k: v for k, v in dict(old.provenance or existing.provenance).items() if k != "replaces"}
                replaced = {"value": old.value, "version": old.version, "dtype": old_dtype, "provenance": former}
                source = {**provenance, "replaces": replaced}
            metrics[name] = replace(old, value=got, provenance=source, version=current, dtype=dtype)
            continue
        if name in unchecked:
            continue
        tolerance = (spread or {}).get(name)
        if got is not None and tolerance is None:
            # no measured spread, so no honest tolerance: record why the metric is not checked rather than guess one
            unchecked[name] = "no spread: the metric is undefined on some of the row subsets"
            diff.append({"metric": name, "old": None, "new": "unchecked", "definition": ""})
            continue
        metrics[name] = MetricExpectation(
            value=got,
            direction=DEFAULT_DIRECTION.get(name, "both"),
            abs=tolerance or 0.0,
            basis=spread_basis if got is not None else "expected undefined",
            version=current_version(name),
            dtype=dtype,
        )
        diff.append({"metric": name, "old": None, "new": got, "definition": f"v{current_version(name)}"})
    return (
        # a published file keeps its source; each replaced metric says what replaced it
        ExpectationFile(case, existing.provenance if published else provenance, metrics, unchecked),
        pd.DataFrame(diff, columns=["metric", "old", "new", "definition"]),
    )


def _moved(old: int | None, new: int) -> str:
    return f"v{new}" if old == new else f"v{old} → v{new}"


def verdict_markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".6g", missingval="undefined")
