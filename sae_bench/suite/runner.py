"""What `pytest benchmarks` and `sae-bench gate` do with each (case, metric group): measure it, check it against its
expectation file (written atomically under a lock when asked), record it, and keep every verdict with the SAE that
produced it. No pytest here: an item's outcome is returned, or raised as `ItemSkipped` / `ItemFailed` /
`ItemXfailed` / `BadInput` (an `UnusableSAE`, a dataset that cannot give the rows), which `benchmarks/conftest.py`
turns into pytest's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch

from sae_bench.cases.claims import judge
from sae_bench.cases.registry import SHIPPED_CASES, Case, Registry, cases_selected_by, load_registries
from sae_bench.engine.backends import DEFAULT_BACKEND
from sae_bench.engine.feature_stats import FeatureSide
from sae_bench.errors import BadInput
from sae_bench.execution.executor import RUN_LOCAL_VECTORS, CaseExecutor
from sae_bench.execution.ray_units import RayUnits, units_of
from sae_bench.expectations import files as expectation_files
from sae_bench.expectations import rules as expectations
from sae_bench.expectations.case_files import CaseExpectations
from sae_bench.expectations.published import NOT_PUBLISHED
from sae_bench.option_values import check_ray_address
from sae_bench.results_store.database import CaseMeasurement, ResultsDB, default_path
from sae_bench.sources.hub import Lack, missing
from sae_bench.sources.loading import source_fingerprint
from sae_bench.sources.rehearsal import scaled_case
from sae_bench.suite import explanations

SPREAD_SUBSETS = 8
PACKAGES = ("sae-transfer-bench", "torch", "sae-lens", "transformer-lens")
VERDICT_COLUMNS = ["case", "group", *expectations.VERDICT_COLUMNS, "sae", "sae_sha256", "hook_mismatch_ok"]


class ItemSkipped(Exception):
    """The item cannot run here (a missing GPU, repo, artifact or dataset); the message says which, and `lacks`
    maps each case to what it lacks (for the run's grouped summary)."""

    def __init__(self, message: str, lacks: dict[str, list] | None = None):
        super().__init__(message)
        self.lacks = lacks or {}


class ItemFailed(Exception):
    """The item ran and failed (a regression, a new expectation file to review, a rehearsal problem)."""


class ItemXfailed(Exception):
    """A known non-reproduction (a claim the seeds' numbers do not support here)."""


@dataclass(frozen=True)
class SuiteOptions:
    """Everything a run of the suite is told (pytest options, or the gate's)."""

    cases_dirs: tuple[Path, ...] = ()
    """A user's case folders, added to the shipped cases; each keeps its expectation files in its `expectations/`."""
    expectations_dir: Path | None = None
    """Read (and write) every case's expectation files here instead (None: the shipped ones for shipped cases)."""
    device: str = "cpu"
    update: bool = False
    replace_published: bool = False
    rehearse: bool = False
    sae_override: str | None = None
    sae_cases: str | None = None
    """-k expression ('@' allowed) over item ids `CASE:GROUP`: the SAE is replaced in every case it selects an item
    of (None: in every case)."""
    strict_expectations: bool = False
    ray: str | None = None
    """Measure on a Ray cluster at this address (`local`: one started on 127.0.0.1 for the run); None: here."""
    device_memory: float | None = None
    """Bytes of memory a shared pass may fill, where its SAEs are split over passes beyond (None: the device's)."""
    backend: str = DEFAULT_BACKEND
    """How models run (`sae_bench.engine.backends`)."""
    dtype: str | None = None
    """--dtype: every case's models run in this precision instead of the one its case declares (None: as declared),
    judged against the expectations as they are."""
    explain: bool = False
    """--explain: record why each transfer case fails as well (`sae_bench.suite.explanations`), from the same
    passes."""


@dataclass(frozen=True)
class Evaluated:
    """One item that ran: which SAE (spec and weight hash) its numbers are about."""

    case: str
    group: str
    sae: str
    sae_sha256: str


@dataclass
class UpdatedValue:
    """A value --update-expectations changed, for the end-of-run diff."""

    path: Path
    metric: str
    old: float | str | None
    new: float | str | None
    verdict_before: str


def check_device(name: str, *, here: bool = True) -> None:
    """Refuse, before anything loads, a device torch cannot parse or (`here`: on this machine, not a Ray cluster's)
    does not have."""

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise BadInput(f"--device {name!r} is not a torch device ({err}); use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BadInput(f"--device {name}: the suite runs on cpu or cuda")
    if not here:
        return
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(
            f"--device {name}: torch sees no CUDA device on this machine. Drop --device to run on the CPU (GPU cases "
            "then skip with their reason), or run on a machine with a GPU"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BadInput(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")


def exact_float32_matmuls(device: str) -> str:
    """Float32 matmuls on CUDA in full float32, never TF32 (10-bit mantissa inputs): a float32 case means float32
    arithmetic on every device, and the suite's tolerances (1e-5 relative) assume it; a user who wants TF32's speed
    runs the case in bfloat16, which says so. Returns how the run's device is recorded."""
    if not device.startswith("cuda"):
        return device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return f"{device} (float32 matmuls without TF32)"


def dtype_problem_on(dtype: str, device: str) -> str | None:
    """Why models cannot run in `dtype` on `device` (None: they can): bfloat16 on a CUDA device without bfloat16
    arithmetic (compute capability below 8.0). float16 runs everywhere torch does (slowly on a CPU)."""
    if dtype == "bfloat16" and device.startswith("cuda") and torch.cuda.is_available():
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            name = torch.cuda.get_device_name(torch.device(device))
            return f"{name} has no bfloat16 arithmetic (compute capability 8.0 or later): run in float16 or float32"
    return None


class Suite:
    """Checks one (case, metric group) against its expectation file; collects every verdict of the session."""

    def __init__(self, options: SuiteOptions, *, selection_args: str = "", shipped: Registry | None = None):
        """`shipped`: the registry of the shipped cases and `options.cases_dirs`, when the caller has it loaded."""
        self.options = options
        if options.rehearse and options.update:
            raise BadInput("--rehearse never writes expectations: drop --update-expectations")
        if options.rehearse and options.ray is not None:
            raise BadInput(
                "--rehearse runs in this process (its stand-ins are set up here, not on a cluster): drop --ray"
            )
        if options.ray is not None and importlib.util.find_spec("ray") is None:
            raise BadInput("--ray needs Ray: pip install 'sae-transfer-bench[ray]' (or pip install ray)")
        if options.ray is not None:
            check_ray_address(options.ray)
        if options.explain and options.ray is not None:
            raise BadInput(
                "--explain runs here: its feature tables read both cases' rows and tokenizers, which stay on the "
                "cluster under --ray. Drop one"
            )
        if options.replace_published and not options.update:
            raise BadInput("--replace-published goes with --update-expectations")
        if options.update and options.sae_override:
            raise BadInput(
                "--update-expectations with --sae would write the new SAE's numbers into the files of the SAE it "
                "replaces: drop one (gate a new SAE without updating; update with the SAEs the case files name)"
            )
        if not options.rehearse:  # the rehearsal runs on the CPU whatever --device says
            check_device(options.device, here=options.ray is None)  # with --ray, the cluster's devices
            if options.dtype and options.ray is None and (problem := dtype_problem_on(options.dtype, options.device)):
                raise BadInput(f"--dtype {options.dtype} on --device {options.device}: {problem}")
        self.device_recorded = exact_float32_matmuls(options.device) if options.ray is None else options.device
        self.shipped = shipped if shipped is not None else load_registries((SHIPPED_CASES, *options.cases_dirs))
        self.registry = self._with_override(self.shipped)
        self.executor = CaseExecutor(
            device=options.device,
            device_memory=options.device_memory,
            backend=options.backend,
            explaining=options.explain,
        )
        self.case_files = CaseExpectations(options.expectations_dir)
        self.verdicts: list[pd.DataFrame] = []
        self.evaluated: list[Evaluated] = []
        self.unusable: dict[str, str] = {}
        """Items that met bad input (an SAE that cannot be evaluated, rows a dataset cannot give), with why: the
        gate's exit 2."""
        self.updates: list[UpdatedValue] = []
        self.claim_outcomes: list[tuple[str, bool, str]] = []
        self.first_run_cases: set[str] = set()
        self.pending: Counter[str] = Counter()
        self.results, self.run_id, self.vectors_recorded = None, None, set()
        self.feature_sides: dict[str, FeatureSide | None] = {}
        """--explain: each recorded transfer case's features with its rows and tokenizer, kept for the feature table
        of a later case of its SAE (its model may be released by then)."""
        self.selection_args = selection_args
        self.remote = None
        self.remote_cases: list[Case] = []
        """--ray: the planned cases that can run, measured on the cluster before the first item is judged."""

    # -- selection ----------------------------------------------------------------------------------------------
    def _with_override(self, registry: Registry) -> Registry:
        spec = self.options.sae_override
        if not spec:
            return registry
        if self.options.sae_cases is None:
            return registry.with_sae(spec)
        replaced = set(cases_selected_by(registry, self.options.sae_cases))
        return registry.with_sae(spec, replaced.__contains__)

    def as_run(self, case: Case) -> Case:
        """The case as this run evaluates it: in --dtype's precision when given, and a hub case scaled down under
        --rehearse."""
        if self.options.dtype is not None:
            case = replace(case, dtype=self.options.dtype)
        if self.options.rehearse and case.tier == "hub":
            return scaled_case(case)
        return case

    def expectation_problems(self, case_ids: Iterable[str]) -> list[str]:
        """One message per expectation file of these cases that cannot be used, read before any case runs; and, with
        --dtype and --update-expectations, one per case declared in another dtype (its file would hold values of a
        precision its case does not run in)."""
        problems = self.case_files.problems(self.registry, case_ids)
        if self.options.update and self.options.dtype is not None:
            other = [self.registry.get(cid) for cid in dict.fromkeys(case_ids)]
            other = [case for case in other if case.dtype != self.options.dtype]
            if other:
                problems.append(
                    f"--dtype {self.options.dtype} with --update-expectations would write {self.options.dtype} values "
                    f"into the expectation files of {len(other)} case(s) declared in another dtype (e.g. "
                    f"{other[0].id}, {other[0].dtype}: {self.case_files.path(other[0])}). Drop --dtype, or change "
                    "the case's dtype in its case file and update then"
                )
        return problems

    def stale_expectations(self, case_ids: Iterable[str]) -> list[tuple[Path, str]]:
        """Expected values of these cases measured under another definition of their metric (none to report when
        this run updates them: --update-expectations measures them again)."""
        return [] if self.options.update else self.case_files.stale(self.registry, case_ids, self.options.dtype)

    def stale_temporaries(self) -> list[Path]:
        return self.case_files.stale_temporaries(self.shipped)

    def orphan_expectations(self) -> list[str]:
        return self.case_files.orphans(self.shipped)

    def registry_source(self, case: Case) -> str:
        """Which registry a case came from, for the results database: the shipped one (with the package version),
        or a user's folder with its git commit."""

        folder = Path(case.file).resolve().parent
        if folder == SHIPPED_CASES.resolve():
            return f"shipped sae-transfer-bench {version('sae-transfer-bench')}"
        return f"{folder} (git {git_commit(folder) or 'none'})"

    def plan(self, case_ids: Sequence[str]) -> list[str]:
        """Tell the executor which cases will run (each model's together); returns them model by model."""
        cases = {cid: self.as_run(self.registry.get(cid)) for cid in dict.fromkeys(case_ids)}
        first_seen: dict[tuple, int] = {}
        for case in cases.values():
            first_seen.setdefault((case.family, case.model), len(first_seen))
        family_order: dict[str, int] = {}
        for case in cases.values():
            family_order.setdefault(case.family, len(family_order))
        self.pending = Counter(case_ids)
        if self.options.explain:  # features only where a feature table can use them
            self.executor.feature_cases = explanations.paired_with_another_model(list(cases.values()))
        self.executor.plan(list(cases.values()))
        if self.options.ray is not None:
            self.remote_cases = [c for c in cases.values() if missing_for(c, self.options.device) is None]
        return sorted(cases, key=lambda cid: (family_order[cases[cid].family], first_seen[_model_key(cases[cid])]))

    def _measure_remote(self) -> None:
        """--ray: measure every planned case that can run on the cluster, unit by unit, once."""
        if not self.remote_cases:
            return

        cases, self.remote_cases = self.remote_cases, []
        address = None if self.options.ray == "local" else self.options.ray
        self.remote = self.remote or RayUnits(
            address, device=self.options.device, device_memory=self.options.device_memory, backend=self.options.backend
        )
        self.executor.absorb(self.remote.run(units_of(cases)))

    def close_remote(self) -> None:
        if self.remote is not None:
            self.remote.shutdown()
            self.remote = None

    def finished(self, case: Case) -> None:
        """One item of `case` is done; after its last one the executor may release its models."""
        self.pending[case.id] -= 1
        if self.pending[case.id] == 0:
            self.executor.done(case)

    # -- one item -----------------------------------------------------------------------------------------------
    def check(self, case_id: str, group: str, record_property: Callable[[str, str], None] | None = None) -> str | None:
        """Measure and judge one item; returns the message of an improvement beyond tolerance (the item passes,
        with a warning), raises on a skip, a failure or an SAE that cannot be evaluated."""
        case = self.as_run(self.registry.get(case_id))
        try:
            return self._check(case, group, record_property)
        except BadInput as err:  # an SAE that cannot be evaluated, a dataset that cannot give the rows, …
            self.unusable[f"{case.id}:{group}"] = str(err)
            raise
        finally:
            self.finished(case)

    def _check(self, case: Case, group: str, record_property) -> str | None:
        rehearsed = self.options.rehearse and case.tier == "hub"
        reason = missing_for(case, self.options.device)
        if reason:
            if rehearsed:  # a rehearsal that skips proves nothing
                raise ItemFailed(f"rehearsal: a stand-in is missing: {reason}")
            raise ItemSkipped(reason, {case.id: missing_reasons(case, self.options.device)})
        self._measure_remote()
        measured = self.executor.measure(case)
        sha = self.executor.sae_fingerprint(case.sae)
        self.evaluated.append(Evaluated(case.id, group, case.sae, sha))
        if record_property is not None:  # on the item's JUnit entry: which SAE these numbers are about
            record_property("sae", case.sae)
            record_property("sae_sha256", sha)
        names = case.metrics(group)
        path = self.case_files.path(case)
        if rehearsed and not path.exists():
            if case.family not in NOT_PUBLISHED:
                raise ItemFailed(f"rehearsal: {path} is missing and {case.family} is not in NOT_PUBLISHED")
            self.first_run_cases.add(case.id)  # measured end to end; a first real run writes its expectations
            return None
        with expectation_files.locked(path):
            existing = self.case_files.read(case)
            if self.options.update or existing is None or not all(existing.covers(n) for n in names):
                existing = self.case_files.read(case, fresh=True)  # under the lock: as a parallel writer left it
            uncovered = [n for n in names if existing is None or not existing.covers(n)]
            published = existing is not None and expectations.is_published(existing)
            if (published or rehearsed) and uncovered:
                raise ItemFailed(
                    f"{path} lists neither a value nor an unchecked reason for {uncovered}; a published file must "
                    "cover every metric of its case's groups (`sae-bench expectations published` writes them)"
                )
            if self.options.update and published and not self.options.replace_published:
                raise ItemFailed(
                    f"{path} holds published values; a measured run never overwrites them. Add "
                    "--replace-published to replace them anyway (the old values and their source stay in the file)"
                )
            if self.options.update or uncovered:
                self._write(case, path, existing, measured, names)
        if uncovered and not self.options.update:
            raise ItemFailed(f"wrote new {group} expectations to {path}; review the file and commit it")
        declared = self.registry.get(case.id).dtype
        table = expectations.compare(self.case_files.read(case), measured, names, declared=declared, run=case.dtype)
        table = table.assign(case=case.id, group=group, sae=case.sae, sae_sha256=sha)
        self.verdicts.append(table.assign(hook_mismatch_ok=case.hook_mismatch_ok or None))
        if self.results is not None:
            self._record(case, group, measured, table)
        text = expectations.verdict_markdown(table[expectations.VERDICT_COLUMNS])
        if rehearsed:  # miniatures are not the real models: report the verdicts, fail only on plumbing
            return None
        if (table.verdict == "regression").any():
            raise ItemFailed(f"{case.id} [{group}] regressed against {path}:\n\n{text}\n")
        if (table.verdict == "improved").any():
            return f"{case.id} [{group}] improved beyond tolerance; update {path}:\n{text}"
        return None

    def _write(self, case: Case, path: Path, existing, measured: dict, names) -> None:
        """New values for `names` (tolerances kept; metrics new to the file get the measured spread), written
        atomically; every changed value is kept for the end-of-run diff with the verdict it had before."""
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
            replace_published=self.options.replace_published,
            dtype=case.dtype,
        )
        declared = self.registry.get(case.id).dtype
        before = (
            {}
            if existing is None
            else expectations.compare(existing, measured, names, declared=declared, run=case.dtype).set_index("metric")
        )
        self.case_files.write(case, new)
        for row in diff.itertuples():
            verdict = before.verdict.get(row.metric, "new") if len(before) else "new"
            self.updates.append(UpdatedValue(path, row.metric, row.old, row.new, verdict))

    # -- claims -------------------------------------------------------------------------------------------------
    def check_claim(self, claim_id: str, record_property: Callable[[str, str], None] | None = None) -> None:
        """Evaluate one claim over its cases' measurements (shared with the case items); print both sides. Like a
        case item, it names on its JUnit entry each SAE its numbers are about."""
        claim = self.registry.claim(claim_id)
        self._measure_remote()
        cases = [self.as_run(self.registry.get(case_id)) for case_id in claim.case_ids]
        rehearsed = self.options.rehearse and any(case.tier == "hub" for case in cases)
        reasons = [reason for case in cases if (reason := missing_for(case, self.options.device))]
        if reasons:
            if rehearsed:
                raise ItemFailed(f"rehearsal: a stand-in is missing: {'; '.join(reasons)}")
            lacks = {case.id: lack for case in cases if (lack := missing_reasons(case, self.options.device))}
            raise ItemSkipped(f"claim {claim.id} relates cases that cannot run here: {'; '.join(reasons)}", lacks)
        by_id = {case.id: case for case in cases}
        values, undefined = {}, []
        for term in claim.terms:
            case = by_id[term.case_id]
            try:
                value = self.executor.measure(case).get(term.metric)
            except BadInput as err:
                self.unusable[claim.id] = str(err)
                raise
            if value is None:
                why = self.executor.details(case)[0].get(term.metric, "undefined")
                undefined.append(f"{term} is undefined ({why})")
            values[term] = value
        if record_property is not None:
            for spec in dict.fromkeys(case.sae for case in cases):
                record_property("sae", spec)
                record_property("sae_sha256", self.executor.sae_fingerprint(spec))
        if undefined:
            raise ItemFailed(f"claim {claim.id} cannot be decided: {'; '.join(undefined)}")
        outcome = claim.evaluate(values)
        text = f"{claim.id}: {outcome.explain(values)}\n  source: {claim.source}\n  margin: {claim.margin}"
        self.claim_outcomes.append((claim.id, outcome.holds, text))
        if rehearsed:  # miniatures are not the real models: the claim ran end to end, its verdict is not judged
            return
        verdict, why = judge(claim, outcome)
        if verdict == "xfailed":
            raise ItemXfailed(why)
        if verdict == "failed":
            raise ItemFailed(f"{text}\n{why}")

    # -- results ------------------------------------------------------------------------------------------------
    def open_results(
        self, path: str | None, *, disabled: bool, run_id: int | None, git_commit: str | None, measures: bool = True
    ) -> None:
        """The results database of this run (none for a rehearsal: miniature numbers are not results); a worker
        of pytest-xdist records into its controller's `run_id`. A run that `measures` nothing (--collect-only)
        checks the database is usable and records no run."""

        if disabled or self.options.rehearse:
            return
        self.results = ResultsDB(path or default_path())
        if not measures:
            self.results.close()
            self.results = None
            return
        if run_id is not None:
            self.run_id = run_id
            return
        self.run_id = self.results.start_run(
            selection=self.selection_args,
            device=self.device_recorded,
            git_commit=git_commit,
            versions={p: version(p) for p in PACKAGES},
        )

    def _record(self, case: Case, group: str, measured: dict, table: pd.DataFrame) -> None:
        """Keep what this (case, group) measured in the results database; the case's vectors once a run."""
        undefined, vectors = self.executor.details(case)
        values = {name: measured.get(name) for name in case.metrics(group)}
        self.results.record(self.run_id, self._measurement(case, group, values, undefined, table, measured))
        if case.id not in self.vectors_recorded:
            kept = {k: v.cpu().numpy() for k, v in vectors.items() if k not in RUN_LOCAL_VECTORS}
            self.results.record_vectors(self.run_id, case.id, kept)
            self.vectors_recorded.add(case.id)
            if self.options.explain and not case.paired:
                self._record_explanation(case, measured, undefined)

    def _measurement(
        self, case: Case, group: str, values: dict, undefined: dict, table: pd.DataFrame, measured: dict
    ) -> CaseMeasurement:
        """What one (case, group) measured, as the results database keeps it."""
        return CaseMeasurement(
            case.id,
            group,
            values,
            {name: undefined[name] for name in values if name in undefined},
            table,
            case.sae,
            self.executor.sae_fingerprint(case.sae),
            case.model,
            source_fingerprint(case.model),
            int(measured.get("n_tokens_reconstructed") or measured.get("n_tokens") or 0),
            self.registry_source(case),
            case.dtype,
        )

    def _record_explanation(self, case: Case, measured: dict, undefined: dict) -> None:
        """--explain: the case's values per token class, and the table of its SAE's features that broke from the
        case of the same SAE on its own model, when this run measures that case too."""
        values = explanations.class_values(measured)
        measurement = self._measurement(case, explanations.GROUP, values, undefined, pd.DataFrame(), measured)
        self.results.record(self.run_id, measurement)
        self.feature_sides[case.id] = self.executor.feature_side(case)  # while its model is loaded
        model_name = getattr(self.executor.sae(case.sae).cfg.metadata, "model_name", None) or ""
        planned = [self.as_run(self.registry.get(cid)) for cid in self.pending]
        own = explanations.own_case(case, planned, model_name)
        if own is None:
            return
        if own.id not in self.feature_sides:  # measured now, while its model is needed anyway
            self.feature_sides[own.id] = self.executor.feature_side(own)
        found = explanations.feature_explanation(case, own, self.feature_sides[own.id], self.feature_sides[case.id])
        if found is not None:
            self.results.record_explanation(self.run_id, found)

    # -- output -------------------------------------------------------------------------------------------------
    def verdict_table(self) -> pd.DataFrame:
        table = pd.concat(self.verdicts, ignore_index=True) if self.verdicts else pd.DataFrame()
        return table.reindex(columns=VERDICT_COLUMNS)

    def write_table(self, target: str) -> None:
        table = self.verdict_table()
        if target.endswith(".csv"):
            table.to_csv(target, index=False)
        else:
            Path(target).write_text(expectations.verdict_markdown(table) + "\n")

    def update_diff(self) -> pd.DataFrame:
        """Every value --update-expectations changed: file, metric, old → new, and its verdict before."""
        rows = [vars(u) | {"path": str(u.path)} for u in self.updates]
        return pd.DataFrame(rows, columns=["path", "metric", "old", "new", "verdict_before"])


def git_commit(folder: Path) -> str | None:
    """The commit checked out in the git work tree holding `folder` (None outside one, or without git)."""

    try:
        run = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout.strip() or None if run.returncode == 0 else None


def _model_key(case: Case) -> tuple:
    return (case.family, case.model)


def missing_reasons(case: Case, device: str) -> list:
    """Each thing this case lacks here (`hub.Lack`), with how to get it (empty: it can run)."""
    gpu = Lack("a CUDA GPU", "this machine has none", fix="run with --device cuda on a machine that has one")
    reasons = [gpu] if case.gpu and not device.startswith("cuda") else []
    for spec in dict.fromkeys(s for s in (case.sae, case.model, case.base_model) if s is not None):
        reasons += missing(spec)
    return reasons + missing(case.dataset, dataset=True)


def missing_for(case: Case, device: str) -> str | None:
    """Everything this case lacks here, at once, as one sentence (None: it can run)."""
    reasons = missing_reasons(case, device)
    if not reasons:
        return None
    return f"{case.id} needs " + "; ".join(f"({i}) {reason}" for i, reason in enumerate(reasons, 1))


def measured_provenance(case: Case, executor: CaseExecutor) -> dict:

    tokens = executor.tokens(case)
    n_positions = tokens.tokens.numel() if tokens.position_mask is None else int(tokens.position_mask.sum())
    return {
        "kind": "measured",
        "command": f"pytest benchmarks --case-id '{case.id}' --update-expectations",
        "rows": int(tokens.tokens.shape[0]),
        "positions": n_positions,
        "seed": "none needed: fixed shipped rows, greedy rollouts, deterministic on CPU",
        "dtype": case.dtype,
        "versions": {p: version(p) for p in PACKAGES},
        "date": date.today().isoformat(),
    }


@dataclass
class ExpectationsDigest:
    """One sha256 over every file under a folder (names and bytes), to prove a run wrote nothing there."""

    directory: Path
    before: str = field(init=False)

    def __post_init__(self) -> None:
        self.before = self.now()

    def now(self) -> str:

        digest = hashlib.sha256()
        for path in sorted(p for p in self.directory.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(self.directory)).encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def changed(self) -> bool:
        return self.now() != self.before


@dataclass(eq=False)  # a plugin: hashed by identity
class GivenSuite:
    """A pytest plugin that hands the pytest layer a Suite its caller built (the gate: its options, its checked SAE,
    its results run) in place of one built from the command line."""

    suite: Suite
