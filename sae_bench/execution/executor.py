"""Run a case: load its SAE, model(s) and tokens once, evaluate, and return flat metric values.

The walk is case → sources + data → evaluate → report row (docs/design.md §3). `CaseExecutor` ties three parts
together: the sources cache (models, SAEs, token rows, rollouts, their lifetimes), the pass planner (which planned
cases share a pass, split to fit memory) and the results table (values, details and failures by a typed key), so
the metric groups of one case (separate pytest items) share one evaluation, and cases share models and token sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

from torch import Tensor
from tqdm.auto import tqdm

from sae_bench.cases.registry import Case, ModelKey
from sae_bench.engine.backends import DEFAULT_BACKEND, backend_of, torch_dtype
from sae_bench.engine.definitions import class_metric
from sae_bench.engine.evaluate import (
    EvalConfig,
    PassCost,
    estimate_scaling_factor,
    evaluate_shared,
    evaluate_transfer,
)
from sae_bench.engine.feature_stats import FeatureSide, FeatureSummary
from sae_bench.engine.forward_cost import ForwardCost
from sae_bench.engine.outliers import OutlierPolicy
from sae_bench.engine.prefix import PREFIX_CACHE_BYTES, PrefixActivations, prefix_bytes, run_prefix
from sae_bench.engine.splicing import resolve_hook
from sae_bench.engine.transfer_report import TransferReport
from sae_bench.engine.universality import PairedConfig, evaluate_universality, paired_densities
from sae_bench.errors import BadInput, UnusableSAE
from sae_bench.execution.memory import device_memory_bytes
from sae_bench.execution.pass_planner import PassPlanner
from sae_bench.execution.results_table import Details, MeasurementKey, ResultsTable, Values
from sae_bench.execution.sources_cache import CaseTokens, SourcesCache
from sae_bench.sources.checked_sae import CheckedSae, sae_fit_problem


def split_rows(tokens: CaseTokens, k: int) -> list[CaseTokens]:
    """k disjoint, equal, contiguous slices of the rows (the remainder is left out)."""
    size = tokens.tokens.shape[0] // k
    if size < 1:
        raise ValueError(f"cannot split {tokens.tokens.shape[0]} rows into {k} subsets")

    def rows(tensor: Tensor | None, i: int) -> Tensor | None:
        return None if tensor is None else tensor[i * size : (i + 1) * size]

    return [
        CaseTokens(
            *(rows(tensor, i) for tensor in (tokens.tokens, tokens.position_mask, tokens.full_rows, tokens.roles))
        )
        for i in range(k)
    ]


class CaseExecutor:
    """Measures cases, each once, sharing what it loads and the passes it runs."""

    def __init__(
        self,
        *,
        device: str = "cpu",
        progress: bool = False,
        prefix_cache_bytes: int = PREFIX_CACHE_BYTES,
        device_memory: float | None = None,
        backend: str = DEFAULT_BACKEND,
        explaining: bool = False,
    ):
        self.device = device
        self.explaining = explaining
        """Every whole-row transfer evaluation also streams its token classes and feature statistics (the suite's
        --explain): in the same passes, recorded beside the values (`_transfer_values`)."""
        self.feature_cases: set[str] | None = None
        """Under `explaining`, the cases whose features are streamed (None: every case)."""
        self.backend = backend
        """How models run (`sae_bench.engine.backends`): HookedTransformer, or TransformerBridge over the HF model."""
        self.device_memory = device_memory if device_memory is not None else device_memory_bytes(device)
        """Bytes a shared pass may fill (`memory.USABLE_FRACTION` of it); its SAEs are split over passes beyond."""
        self.progress = progress
        self.prefix_cache_bytes = prefix_cache_bytes
        self.cost = ForwardCost()
        """Block rows the models ran for the measured cases, against the floor of their passes."""
        self.sources = SourcesCache(device=device, backend=backend, cost=self.cost)
        self.planner = PassPlanner(self.sources, self.device_memory)
        self.results = ResultsTable()
        self.shared_passes: list[list[str]] = []
        """The case ids of each shared pass run, in order."""
        self._mean_norms: dict[tuple, float] = {}
        self._prefixes: dict[tuple, PrefixActivations] = {}
        self._prefix_floors: set[tuple] = set()

    # -- sources (`SourcesCache`) -----------------------------------------------------------------------------------
    def model(self, key: ModelKey):
        return self.sources.model(key)

    def sae(self, spec: str):
        return self.sources.sae(spec)

    def adopt(self, checked: CheckedSae) -> None:
        """Keep an SAE already loaded and checked (the gate's new SAE): it is neither loaded nor hashed again."""
        self.sources.adopt(checked)

    def tokens(self, case: Case) -> CaseTokens:
        return self.sources.tokens(case)

    def sae_fingerprint(self, spec: str) -> str:
        return self.sources.fingerprint(spec)

    @property
    def model_loads(self):
        return self.sources.model_loads

    @property
    def model_releases(self):
        return self.sources.model_releases

    def live_models(self) -> list[ModelKey]:
        return self.sources.live_models()

    def check_fits(self, case: Case) -> None:
        """Raise UnusableSAE when the case's SAE cannot be evaluated there: NaN/Inf weights, another input width
        than the model's, or another hook than the one its config names (unless the case says why in
        `hook_mismatch_ok`)."""
        sae, model = self.sae(case.sae), self.model(case.model_key)
        problem = sae_fit_problem(sae, case, backend_of(model).d_model)
        if problem:
            raise UnusableSAE(problem, spec=case.sae)

    def _fits(self, case: Case) -> bool:
        try:
            self.check_fits(case)
        except UnusableSAE:
            return False
        return True

    # -- evaluation ---------------------------------------------------------------------------------------------
    def outlier_policy(self, case: Case, tokens: CaseTokens) -> OutlierPolicy | None:
        setting = case.outliers
        if setting is None:
            return None
        if setting.norm != "mean-norm":
            return OutlierPolicy(setting.threshold, norm=setting.norm, count_in_ce=setting.count_in_ce)
        key = (case.model_key, case.hook, case.dataset, case.tokens, case.context, case.mask)
        if key not in self._mean_norms:  # from the prefix that the case's shared pass then uses too
            model = self.model(case.model_key)
            factor = estimate_scaling_factor(
                model,
                tokens.tokens,
                case.hook,
                batch_size=case.batch_size,
                position_mask=tokens.position_mask,
                prefix=self.prefix(case, case.model_key),
            )
            self._mean_norms[key] = backend_of(model).d_model ** 0.5 / factor
        return OutlierPolicy(setting.threshold * self._mean_norms[key], norm="raw", count_in_ce=setting.count_in_ce)

    def measure(self, case: Case, subsets: int = 0) -> Values | list[Values]:
        """The case's metric values (all groups at once); with `subsets=k`, the values on k disjoint row slices.
        UnusableSAE when the case's SAE cannot be evaluated (the other cases of its shared pass still are)."""
        key = MeasurementKey.of(case, subsets)
        if key in self.results.values:  # measured already (its models may be released since)
            return self.results.values[key]
        self.results.raise_failure(case)
        self.check_fits(case)
        if not subsets and not case.paired:
            self._measure_shared(case)
            self.results.raise_failure(case)
        if key not in self.results.values:
            tokens = self.tokens(case)
            parts = split_rows(tokens, subsets) if subsets else [tokens]
            policy = self.outlier_policy(case, tokens) if not case.paired else None
            try:
                evaluations = [self._evaluate(case, part, policy, whole=not subsets) for part in parts]
            except UnusableSAE as err:
                raise self.results.fail(case, err) from err
            if subsets:
                self.results.values[key] = [value for value, _ in evaluations]
            else:
                self.results.record(case, *evaluations[0])
        return self.results.values[key]

    def details(self, case: Case) -> Details:
        """Why each undefined metric of the case's (whole-token) evaluation is undefined, and its per-feature
        vectors (densities; for paired cases also the similarities and the regular band)."""
        self.measure(case)
        return self.results.details[MeasurementKey.of(case)]

    def _evaluate(
        self, case: Case, tokens: CaseTokens, policy: OutlierPolicy | None, *, whole: bool
    ) -> tuple[dict[str, float | None], tuple[dict[str, str], dict[str, Tensor]]]:
        """The metric values, and (undefined reasons, per-feature vectors); `whole`: the case's rows, all of them
        (then a planned paired case takes both models' prefixes from the cache)."""
        sae, model = self.sae(case.sae), self.model(case.model_key)
        if case.paired:
            config = PairedConfig(
                hook=case.hook,
                batch_size=case.batch_size,
                base_scaling_factor=case.scaling_factor,
                finetuned_scaling_factor=case.scaling_factor,
                exclude_special_tokens=case.exclude_special_tokens,
                progress=self.progress,
            )
            report = evaluate_universality(
                self.model(case.base_model_key),
                model,
                sae,
                tokens.tokens,
                config,
                position_mask=tokens.position_mask,
                prefix_base=self.prefix(case, case.base_model_key) if whole else None,
                prefix_finetuned=self.prefix(case, case.model_key) if whole else None,
            )
            if case.bands_from_full_rows:  # Kutsyk's Gemma bands: densities over the full rows, BOS included
                densities = paired_densities(self.model(case.base_model_key), model, sae, tokens.full_rows, config)
                report = report.with_bands_from(*densities)
                if whole:  # another token set: its floor is one more prefix per model
                    blocks = resolve_hook(model, case.hook).blocks_before
                    for key in case.model_keys:
                        self.cost.add_floor(str(key), tokens.full_rows.shape[0], blocks)
            summary = dict(report.summary())
            vectors = {
                "density_base": report.density_base,
                "density_finetuned": report.density_finetuned,
                "activation_similarity": report.activation_similarity,
                "logit_similarity": report.logit_similarity,
                "regular": report.regular.double(),
            }
            undefined = {k: "no feature in the band, or every one undefined" for k, v in summary.items() if v is None}
            return summary, (undefined, vectors)
        report = evaluate_transfer(
            model,
            sae,
            tokens.tokens,
            self._config(case, policy, explain=whole),
            position_mask=tokens.position_mask,
            token_roles=tokens.roles,
        )
        return _transfer_values(report)

    def explain(self, case: Case) -> TransferReport:
        """A transfer case's evaluation with its metrics also per token class (`report.token_classes`) and its
        features' latent scaling and top activations (`report.features`): the whole evaluation run again with both
        streamed, on its own rows, SAE and model."""
        if case.paired:
            raise BadInput(f"{case.id} is a paired case: token classes explain a transfer case (SAE@MODEL)")
        self.check_fits(case)
        tokens = self.tokens(case)
        config = replace(self._config(case, self.outlier_policy(case, tokens)), token_classes=True, feature_stats=True)
        return evaluate_transfer(
            self.model(case.model_key),
            self.sae(case.sae),
            tokens.tokens,
            config,
            position_mask=tokens.position_mask,
            token_roles=tokens.roles,
        )

    def feature_side(self, case: Case) -> FeatureSide | None:
        """The case's features as its explained whole-row evaluation left them (densities, latent scaling, top
        activations) with its rows and its model's tokenizer; None when that evaluation streamed no features."""
        vectors = self.details(case)[1]
        if "latent_scaling_beta" not in vectors:
            return None
        summary = FeatureSummary(*(vectors[name] for name in FEATURE_VECTORS))
        return self.side(case, vectors["feature_density"], summary)

    def side(self, case: Case, density: Tensor, summary: FeatureSummary) -> FeatureSide:
        """The case's features (`density`, `summary`) with the rows they point into and its model's tokenizer."""
        tokenizer = backend_of(self.model(case.model_key)).tokenizer
        decode = None if tokenizer is None else tokenizer.decode
        return FeatureSide(density, summary, self.tokens(case).tokens, decode)

    def _config(self, case: Case, policy: OutlierPolicy | None, *, explain: bool = True) -> EvalConfig:
        """The case's evaluation settings; with `explain`, its token classes too where the case or --explain asks,
        and its features under --explain."""
        return EvalConfig(
            hook=case.hook,
            batch_size=case.batch_size,
            scaling_factor=case.scaling_factor,
            scaling_factor_source=case.scaling_factor_source,
            outliers=policy,
            exclude_special_tokens=case.exclude_special_tokens,
            progress=self.progress,
            pooled_per_token_ev="reconstruction-pooled" in case.groups,
            dtype=torch_dtype(case.dtype),
            overflow=case.overflow,
            token_classes=explain and (self.explaining or case.token_classes),
            feature_stats=explain and self.explaining and (self.feature_cases is None or case.id in self.feature_cases),
        )

    def absorb(self, results) -> None:
        """Take what units measured elsewhere (`ray_units`: (unit, UnitResult) pairs) as if measured here: values,
        details, failures, SAE fingerprints and forward counts; those cases are then never measured again."""
        for unit, result in results:
            self.results.absorb(result)
            self.sources.fingerprints.update(result.fingerprints)
            self.cost.run.update(result.run)
            self.cost.floor.update(result.floor)
            self.cost.n_layers.update(result.n_layers)
            self.shared_passes.append([case.id for case in unit])

    # -- shared passes and lifetimes ----------------------------------------------------------------------------
    def plan(self, cases: Sequence[Case]) -> None:
        """The cases this session will measure: transfer cases on one model, token set and batch size, at any hooks,
        are then evaluated together in one shared pass (`evaluate_shared`), and each model is released (`done`)
        once every planned case that needs it has finished."""
        self.planner.plan(cases)
        self.sources.plan(self.planner.planned.values())

    def done(self, case: Case) -> None:
        """A planned case is finished: release each of its models that no remaining planned case needs."""
        if not self.planner.finish(case):
            return
        self._release_prefixes()
        self.sources.done(case)

    def prefix(self, case: Case, key: ModelKey) -> PrefixActivations | None:
        """Model `key`'s residual at the case's hook over the case's rows, run once for every pass that needs it
        (mean-norm threshold, shared pass, paired pass) and kept while a planned case still needs it. None when the
        case is not planned or the activations exceed `prefix_cache_bytes`: each pass then runs its own prefix."""
        tokens, model, token_key = self.tokens(case), self.model(key), self.sources.token_key(case)
        prefix_key = (key, case.hook, case.batch_size, token_key)
        floor_key = (key, case.hook, token_key)
        if floor_key not in self._prefix_floors:  # the floor holds one prefix per model, token set and hook
            self._prefix_floors.add(floor_key)
            self.cost.add_floor(str(key), tokens.tokens.shape[0], resolve_hook(model, case.hook).blocks_before)
        if prefix_key not in self._prefixes:
            if case.id not in self.planner.planned or prefix_bytes(model, tokens.tokens) > self.prefix_cache_bytes:
                return None
            self._prefixes[prefix_key] = run_prefix(
                model, tokens.tokens, case.hook, case.batch_size, position_mask=tokens.position_mask
            )
        return self._prefixes[prefix_key]

    def _release_prefixes(self) -> None:
        """Drop each kept prefix that no remaining planned case reads (same model, hook, batch size and text)."""
        needed = {
            (key, c.hook, c.batch_size, c.dataset, c.tokens, c.context, c.mask, c.drop_first_token)
            for c in self.planner.planned.values()
            for key in c.model_keys
        }
        for prefix_key in list(self._prefixes):
            key, hook, batch_size, (dataset, n_tokens, context, mask, drop_first, _, _) = prefix_key
            if (key, hook, batch_size, dataset, n_tokens, context, mask, drop_first) not in needed:
                del self._prefixes[prefix_key]

    def _measure_shared(self, case: Case) -> None:
        """Evaluate `case` with every planned, not yet measured transfer case that can share its pass; their SAEs
        split over passes where they do not fit the device's memory together (`memory.split_for_memory`)."""
        passes = self.planner.passes(case, self.planner.group(case, self.results))
        for members in tqdm(passes, desc="passes (SAEs split to fit)", disable=not self.progress or len(passes) == 1):
            if len(passes) > 1:  # only this pass's SAEs in memory
                self.sources.release_saes(self.sources.loaded_saes() - {m.sae for m in members})
            self._run_pass(case, [m for m in members if m is case or self._fits(m)])  # a misfit fails alone later
        if len(passes) > 1:
            self.sources.release_saes(self.sources.loaded_saes())

    def _run_pass(self, case: Case, group: list[Case]) -> None:
        """One shared pass over `group` (on `case`'s model and rows), each case's values recorded; an SAE that fails
        mid-pass fails only its cases: the pass runs again without it."""
        tokens, model = self.tokens(case), self.model(case.model_key)
        while True:
            if not group:
                return
            pairs = [(self.sae(c.sae), self._config(c, self.outlier_policy(c, tokens))) for c in group]
            one_hook = len({c.hook for c in group}) == 1  # else one clean forward keeps every hook's residual
            cost = PassCost()
            try:
                reports = evaluate_shared(
                    model,
                    pairs,
                    tokens.tokens,
                    position_mask=tokens.position_mask,
                    token_roles=tokens.roles,
                    prefix=self.prefix(group[0], case.model_key) if one_hook else None,
                    cost=cost,
                )
                break
            except UnusableSAE as err:
                if err.variant is None:
                    raise
                self.results.fail(group.pop(err.variant), err)
        if one_hook:  # the prefix is counted where it is run (`prefix`)
            blocks_after = backend_of(model).n_layers - resolve_hook(model, group[0].hook).blocks_before
            self.cost.add_floor(str(case.model_key), cost.continued_rows, blocks_after)
        else:
            self.cost.add_floor(str(case.model_key), cost.block_rows, 1)
        self.shared_passes.append([c.id for c in group])
        for member, report in zip(group, reports, strict=True):
            self.results.record(member, *_transfer_values(report))


FEATURE_VECTORS = ("latent_scaling_beta", "feature_fired", "top_values", "top_sequence", "top_position")
"""The details vectors of an explained evaluation's features, in `FeatureSummary`'s field order."""
RUN_LOCAL_VECTORS = frozenset(FEATURE_VECTORS[2:])
"""Vectors that point into this run's rows (top activations): kept for the run's explanations, never recorded."""


def _transfer_values(report: TransferReport) -> tuple[Values, Details]:
    """A transfer report as (flat metric values, (undefined reasons, per-feature vectors)); an explained one adds
    each class's metrics (`M_by_class[CLASS]`) to the values and its features' statistics to the vectors."""
    values = {k: v for k, v in report.to_row().items() if not k.startswith("setting_")}
    undefined = dict(report.undefined)
    vectors = {} if report.feature_density is None else {"feature_density": report.feature_density}
    for token_class, row in (report.token_classes or {}).items():
        for metric, value in row.items():
            name = class_metric(metric, token_class)
            values[name] = value
            if value is None:
                undefined[name] = f"no {token_class} positions" if not row["tokens"] else "undefined for this class"
    if report.features is not None:
        summary = report.features
        vectors |= dict(zip(FEATURE_VECTORS, (getattr(summary, f.name) for f in fields(summary)), strict=True))
    return values, (undefined, vectors)
