"""Run a case: load its SAE, model(s) and tokens once, evaluate, and return flat metric values.

The walk is case → sources + data → evaluate → report row (docs/design.md §3); `CaseExecutor` caches each stage so the
metric groups of one case (separate pytest items) share one evaluation, and cases share models and token sets.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sae_bench.cases.registry import CHAT_MASKS, Case
from sae_bench.engine.backends import DEFAULT_BACKEND, backend_of
from sae_bench.engine.evaluate import (
    EvalConfig,
    PassCost,
    estimate_scaling_factor,
    evaluate_shared,
    evaluate_transfer,
)
from sae_bench.engine.forward_cost import ForwardCost
from sae_bench.engine.outliers import OutlierPolicy
from sae_bench.engine.prefix import PREFIX_CACHE_BYTES, PrefixActivations, prefix_bytes, run_prefix
from sae_bench.engine.splicing import resolve_hook
from sae_bench.engine.universality import PairedConfig, evaluate_universality
from sae_bench.errors import UnitFailed, UnusableSAE
from sae_bench.execution.memory import batch_bytes, device_memory_bytes, sae_width, split_for_memory
from sae_bench.source_spec import source_spec
from sae_bench.sources.chat import ChatRows, cached_rollouts, greedy_rollouts
from sae_bench.sources.checked_sae import CheckedSae, check_sae
from sae_bench.sources.hub import load_alpaca_instructions
from sae_bench.sources.loading import (
    end_of_turn_id,
    kissane_prompts,
    load_chat_prompts,
    load_dataset_rows,
    load_model,
    source_fingerprint,
)

ROLLOUT_TOKENS = 64  # Kissane: greedy, 64 new tokens


@dataclass(frozen=True)
class CaseTokens:
    """The token rows of a case and which positions it evaluates."""

    tokens: Tensor
    position_mask: Tensor | None


def split_rows(tokens: CaseTokens, k: int) -> list[CaseTokens]:
    """k disjoint, equal, contiguous slices of the rows (the remainder is left out)."""
    size = tokens.tokens.shape[0] // k
    if size < 1:
        raise ValueError(f"cannot split {tokens.tokens.shape[0]} rows into {k} subsets")
    mask = tokens.position_mask
    return [
        CaseTokens(tokens.tokens[i * size : (i + 1) * size], None if mask is None else mask[i * size : (i + 1) * size])
        for i in range(k)
    ]


class CaseExecutor:
    """Evaluates cases, caching models, SAEs, token sets and results for the whole session."""

    def __init__(
        self,
        *,
        device: str = "cpu",
        progress: bool = False,
        prefix_cache_bytes: int = PREFIX_CACHE_BYTES,
        device_memory: float | None = None,
        backend: str = DEFAULT_BACKEND,
    ):
        self.device = device
        self.backend = backend
        """How models run (`sae_bench.engine.backends`): HookedTransformer, or TransformerBridge over the HF model."""
        self.device_memory = device_memory if device_memory is not None else device_memory_bytes(device)
        """Bytes a shared pass may fill (`memory.USABLE_FRACTION` of it); its SAEs are split over passes beyond."""
        self.progress = progress
        self.prefix_cache_bytes = prefix_cache_bytes
        self._models: dict[str, Any] = {}
        self._saes: dict[str, Any] = {}
        self._checked: dict[str, CheckedSae] = {}
        self._tokens: dict[tuple, CaseTokens] = {}
        self._results: dict[tuple, dict[str, float | None]] = {}
        self._mean_norms: dict[tuple, float] = {}
        self._details: dict[tuple, tuple[dict[str, str], dict[str, Tensor]]] = {}
        self._sae_fingerprints: dict[str, str] = {}
        self._unusable_saes: dict[str, UnusableSAE] = {}
        self._failures: dict[tuple, UnusableSAE] = {}
        """Cases whose SAE failed in a pass (NaN/Inf output, a misfit): their error, raised when they are measured."""
        self._tokenizer_ids: dict[str, str] = {}
        self.model_loads: Counter[str] = Counter()
        """How often each model spec was loaded (once, while the executor lives)."""
        self.model_releases: Counter[str] = Counter()
        """How often each model spec was released after its last planned case."""
        self.shared_passes: list[list[str]] = []
        """The case ids of each shared pass run, in order."""
        self._planned: dict[str, Case] = {}
        self._users: Counter[str] = Counter()
        self._prefixes: dict[tuple, PrefixActivations] = {}
        self._prefix_floors: set[tuple] = set()
        self.cost = ForwardCost()
        """Block rows the models ran for the measured cases, against the floor of their passes."""

    # -- sources ------------------------------------------------------------------------------------------------
    def model(self, spec: str):
        if spec not in self._models:
            self._models[spec] = load_model(spec, device=self.device, backend=self.backend)
            self.model_loads[spec] += 1
            self.cost.watch(spec, self._models[spec])
        return self._models[spec]

    def sae(self, spec: str):
        """The SAE of `spec`, loaded once (`check_sae`); UnusableSAE (naming the spec) when it cannot be loaded or
        its weights hold NaN or Inf, so no pass it would share is run with it."""
        if spec in self._unusable_saes:
            raise self._unusable_saes[spec]
        if spec not in self._saes:
            try:
                self.adopt(check_sae(spec, device=self.device))
            except UnusableSAE as err:
                self._unusable_saes[spec] = err
                raise
        return self._saes[spec]

    def adopt(self, checked: CheckedSae) -> None:
        """Keep an SAE already loaded and checked (the gate's new SAE): it is neither loaded nor hashed again."""
        self._saes[checked.spec] = checked.sae
        self._checked[checked.spec] = checked

    def check_fits(self, case: Case) -> None:
        """Raise UnusableSAE when the case's SAE cannot be evaluated there: NaN/Inf weights, another input width
        than the model's, or another hook than the one its config names (unless the case says why in
        `hook_mismatch_ok`)."""
        sae, model = self.sae(case.sae), self.model(case.model)
        problem = sae_fit_problem(sae, case, backend_of(model).d_model)
        if problem:
            raise UnusableSAE(problem, spec=case.sae)

    # -- tokens -------------------------------------------------------------------------------------------------
    def tokens(self, case: Case) -> CaseTokens:
        """The case's rows: text read with the tokenizer of the base model (paired cases) or of the model, shared by
        every case with the same text, budget and tokenizer; chat rows are the case model's own rollouts."""
        key = self._token_key(case)
        if key not in self._tokens:
            self._tokens[key] = self._load_tokens(case, self.model(case.base_model or case.model))
        return self._tokens[key]

    def _token_key(self, case: Case) -> tuple:
        """What decides a case's rows: text, budget, mask and the tokenizer that reads them (chat rows: the model)."""
        reader = case.base_model or case.model
        if reader not in self._tokenizer_ids:  # remembered, so a released model is not loaded again for its key
            tokenizer = self.model(reader).tokenizer
            self._tokenizer_ids[reader] = getattr(tokenizer, "name_or_path", None) or reader
        reads = case.model if case.mask in CHAT_MASKS else self._tokenizer_ids[reader]
        return (case.dataset, case.tokens, case.context, case.mask, case.drop_first_token, reads)

    def _load_tokens(self, case: Case, reader) -> CaseTokens:
        n_rows = max(1, case.tokens // case.context)
        if case.mask not in CHAT_MASKS:
            rows = load_dataset_rows(case.dataset, n_rows, case.context, reader)
            if case.drop_first_token:  # the rows every model then runs on, not a mask over the full rows
                rows = rows[:, 1:].contiguous()
            if case.mask == "all":
                return CaseTokens(rows, None)
            mask = torch.ones_like(rows, dtype=torch.bool)
            mask[:, 0] = False  # all-but-first
            return CaseTokens(rows, mask)
        chat = self.rollouts(case, n_rows)
        return CaseTokens(chat.tokens, chat.mask(case.mask))

    def rollouts(self, case: Case, n_rows: int) -> ChatRows:
        """Greedy rollouts of the case's model on the dataset's held-out prompts, cached on disk."""
        model = self.model(case.model)
        tokenizer = backend_of(model).tokenizer
        prompts = load_chat_prompts(case.dataset, tokenizer)[:n_rows]
        dataset = source_spec(case.dataset)
        template = None if dataset.scheme == "zoo" else dataset.params.get("template")
        stop = end_of_turn_id(tokenizer, chat_template=template is None)
        digest = hashlib.sha256(repr(prompts).encode()).hexdigest()
        key = f"{source_fingerprint(case.model)}|{digest}|{ROLLOUT_TOKENS}|{case.context}|torch {torch.__version__}"
        key += f"|generator {self.backend}"  # each backend generates its own rows (`ModelBackend.generate`)

        def make() -> ChatRows:
            rows = greedy_rollouts(
                model,
                prompts,
                max_new_tokens=ROLLOUT_TOKENS,
                stop_token=stop,
                pad_token=tokenizer.pad_token_id,
                context=case.context,
            )
            if template is None:
                return rows

            instructions = load_alpaca_instructions(case.dataset)[:n_rows]
            return kissane_prompts.rows(rows, instructions, tokenizer, template, stop_token=stop, context=case.context)

        with self.cost.uncounted():
            return cached_rollouts(key + (f"|kissane {template}" if template else ""), make)

    # -- evaluation ---------------------------------------------------------------------------------------------
    def outlier_policy(self, case: Case, tokens: CaseTokens) -> OutlierPolicy | None:
        setting = case.outliers
        if setting is None:
            return None
        if setting.norm != "mean-norm":
            return OutlierPolicy(setting.threshold, norm=setting.norm, count_in_ce=setting.count_in_ce)
        key = (case.model, case.hook, case.dataset, case.tokens, case.context, case.mask)
        if key not in self._mean_norms:  # from the prefix that the case's shared pass then uses too
            model = self.model(case.model)
            factor = estimate_scaling_factor(
                model,
                tokens.tokens,
                case.hook,
                batch_size=case.batch_size,
                position_mask=tokens.position_mask,
                prefix=self.prefix(case, case.model),
            )
            self._mean_norms[key] = backend_of(model).d_model ** 0.5 / factor
        return OutlierPolicy(setting.threshold * self._mean_norms[key], norm="raw", count_in_ce=setting.count_in_ce)

    def measure(self, case: Case, subsets: int = 0) -> dict[str, float | None] | list[dict[str, float | None]]:
        """The case's metric values (all groups at once); with `subsets=k`, the values on k disjoint row slices.
        UnusableSAE when the case's SAE cannot be evaluated (the other cases of its shared pass still are)."""
        key = (case.id, case.sae, subsets)
        if key in self._results:  # measured already (its models may be released since)
            return self._results[key]
        if (case.id, case.sae, 0) in self._failures:
            raise self._failures[(case.id, case.sae, 0)]
        self.check_fits(case)
        if not subsets and not case.paired:
            self._measure_shared(case)
            if (case.id, case.sae, 0) in self._failures:
                raise self._failures[(case.id, case.sae, 0)]
        if key not in self._results:
            tokens = self.tokens(case)
            parts = split_rows(tokens, subsets) if subsets else [tokens]
            policy = self.outlier_policy(case, tokens) if not case.paired else None
            try:
                evaluations = [self._evaluate(case, part, policy, whole=not subsets) for part in parts]
            except UnusableSAE as err:
                self._failures[(case.id, case.sae, 0)] = err.named(case.sae)
                raise self._failures[(case.id, case.sae, 0)] from err
            values = [value for value, _ in evaluations]
            self._results[key] = values if subsets else values[0]
            if not subsets:
                self._details[key] = evaluations[0][1]
        return self._results[key]

    def _fits(self, case: Case) -> bool:
        try:
            self.check_fits(case)
        except UnusableSAE:
            return False
        return True

    def details(self, case: Case) -> tuple[dict[str, str], dict[str, Tensor]]:
        """Why each undefined metric of the case's (whole-token) evaluation is undefined, and its per-feature
        vectors (densities; for paired cases also the similarities and the regular band)."""
        self.measure(case)
        return self._details[(case.id, case.sae, 0)]

    def sae_fingerprint(self, spec: str) -> str:
        """sha256 over the SAE's weights (`weights_sha256`), once per SAE."""
        if spec not in self._sae_fingerprints:
            self.sae(spec)
            self._sae_fingerprints[spec] = self._checked[spec].sha256
        return self._sae_fingerprints[spec]

    def _evaluate(
        self, case: Case, tokens: CaseTokens, policy: OutlierPolicy | None, *, whole: bool
    ) -> tuple[dict[str, float | None], tuple[dict[str, str], dict[str, Tensor]]]:
        """The metric values, and (undefined reasons, per-feature vectors); `whole`: the case's rows, all of them
        (then a planned paired case takes both models' prefixes from the cache)."""
        sae, model = self.sae(case.sae), self.model(case.model)
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
                self.model(case.base_model),
                model,
                sae,
                tokens.tokens,
                config,
                position_mask=tokens.position_mask,
                prefix_base=self.prefix(case, case.base_model) if whole else None,
                prefix_finetuned=self.prefix(case, case.model) if whole else None,
            )
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
            model, sae, tokens.tokens, self._config(case, policy), position_mask=tokens.position_mask
        )
        return _transfer_values(report)

    def _config(self, case: Case, policy: OutlierPolicy | None) -> EvalConfig:
        return EvalConfig(
            hook=case.hook,
            batch_size=case.batch_size,
            scaling_factor=case.scaling_factor,
            scaling_factor_source=case.scaling_factor_source,
            outliers=policy,
            exclude_special_tokens=case.exclude_special_tokens,
            progress=self.progress,
            pooled_per_token_ev="reconstruction-pooled" in case.groups,
        )

    def absorb(self, results) -> None:
        """Take what units measured elsewhere (`ray_execution`: (unit, UnitResult) pairs) as if measured here: values,
        details, failures, SAE fingerprints and forward counts; those cases are then never measured again."""

        for unit, result in results:
            for (case_id, sae), values in result.values.items():
                self._results[(case_id, sae, 0)] = values
            for (case_id, sae), details in result.details.items():
                self._details[(case_id, sae, 0)] = details
            for (case_id, sae), why in result.failures.items():
                self._failures[(case_id, sae, 0)] = UnitFailed(why)
            self._sae_fingerprints.update(result.fingerprints)
            self.cost.run.update(result.run)
            self.cost.floor.update(result.floor)
            self.cost.n_layers.update(result.n_layers)
            self.shared_passes.append([case.id for case in unit])

    # -- shared passes and model lifetimes ------------------------------------------------------------------------
    def plan(self, cases: Sequence[Case]) -> None:
        """The cases this session will measure: transfer cases on one model, token set and batch size, at any hooks,
        are then evaluated together in one shared pass (`evaluate_shared`), and each model is released (`done`)
        once every planned case that needs it has finished."""
        self._planned = {case.id: case for case in cases}
        self._users = Counter()
        for case in self._planned.values():
            for spec in {case.model, case.base_model} - {None}:
                self._users[spec] += 1

    def done(self, case: Case) -> None:
        """A planned case is finished: release each of its models that no remaining planned case needs."""
        if case.id not in self._planned:
            return
        del self._planned[case.id]
        self._release_prefixes()
        for spec in {case.model, case.base_model} - {None}:
            self._users[spec] -= 1
            if self._users[spec] == 0 and spec in self._models:
                del self._models[spec]
                self.model_releases[spec] += 1

    def live_models(self) -> list[str]:
        return list(self._models)

    def prefix(self, case: Case, spec: str) -> PrefixActivations | None:
        """Model `spec`'s residual at the case's hook over the case's rows, run once for every pass that needs it
        (mean-norm threshold, shared pass, paired pass) and kept while a planned case still needs it. None when the
        case is not planned or the activations exceed `prefix_cache_bytes`: each pass then runs its own prefix."""
        tokens, model, token_key = self.tokens(case), self.model(spec), self._token_key(case)
        key = (spec, case.hook, case.batch_size, token_key)
        floor_key = (spec, case.hook, token_key)
        if floor_key not in self._prefix_floors:  # the floor holds one prefix per model, token set and hook
            self._prefix_floors.add(floor_key)
            self.cost.add_floor(spec, tokens.tokens.shape[0], resolve_hook(model, case.hook).blocks_before)
        if key not in self._prefixes:
            if case.id not in self._planned or prefix_bytes(model, tokens.tokens) > self.prefix_cache_bytes:
                return None
            self._prefixes[key] = run_prefix(
                model, tokens.tokens, case.hook, case.batch_size, position_mask=tokens.position_mask
            )
        return self._prefixes[key]

    def _release_prefixes(self) -> None:
        """Drop each kept prefix that no remaining planned case reads (same model, hook, batch size and text)."""
        needed = {
            (spec, c.hook, c.batch_size, c.dataset, c.tokens, c.context, c.mask, c.drop_first_token)
            for c in self._planned.values()
            for spec in (c.model, c.base_model)
        }
        for key in list(self._prefixes):
            spec, hook, batch_size, (dataset, n_tokens, context, mask, drop_first, _) = key
            if (spec, hook, batch_size, dataset, n_tokens, context, mask, drop_first) not in needed:
                del self._prefixes[key]

    def _shared_key(self, case: Case) -> tuple:
        """Cases with the same key share a pass: one model, batch size and token set, at any hooks."""
        return (case.model, case.batch_size, self._token_key(case))

    def _measure_shared(self, case: Case) -> None:
        """Evaluate `case` with every planned, not yet measured transfer case that can share its pass; their SAEs
        split over passes where they do not fit the device's memory together (`memory.split_for_memory`)."""
        key = self._shared_key(case)
        group = [case] + [
            other
            for other in self._planned.values()
            if other.id != case.id
            and not other.paired
            and other.model == case.model  # checked first: the token key of another model would load it
            and (other.id, other.sae, 0) not in self._results
            and (other.id, other.sae, 0) not in self._failures
            and self._shared_key(other) == key
        ]
        model = self.model(case.model)
        passes = split_for_memory(
            group,
            self._sae_width,
            base=self._pass_base_bytes(model, case),
            d_model=backend_of(model).d_model,
            memory=self.device_memory,
        )
        for members in tqdm(passes, desc="passes (SAEs split to fit)", disable=not self.progress or len(passes) == 1):
            if len(passes) > 1:  # only this pass's SAEs in memory
                self._release_saes(set(self._saes) - {m.sae for m in members})
            self._run_pass(case, [m for m in members if m is case or self._fits(m)])  # a misfit fails alone later
        if len(passes) > 1:
            self._release_saes(set(self._saes))

    def _run_pass(self, case: Case, group: list[Case]) -> None:
        """One shared pass over `group` (on `case`'s model and rows), each case's values recorded; an SAE that fails
        mid-pass fails only its cases: the pass runs again without it."""
        tokens, model = self.tokens(case), self.model(case.model)
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
                    prefix=self.prefix(group[0], case.model) if one_hook else None,
                    cost=cost,
                )
                break
            except UnusableSAE as err:
                if err.variant is None:
                    raise
                failed = group.pop(err.variant)
                self._failures[(failed.id, failed.sae, 0)] = err.named(failed.sae)
        if one_hook:  # the prefix is counted where it is run (`prefix`)
            blocks_after = backend_of(model).n_layers - resolve_hook(model, group[0].hook).blocks_before
            self.cost.add_floor(case.model, cost.continued_rows, blocks_after)
        else:
            self.cost.add_floor(case.model, cost.block_rows, 1)
        self.shared_passes.append([c.id for c in group])
        for member, report in zip(group, reports, strict=True):
            values, details = _transfer_values(report)
            self._results[(member.id, member.sae, 0)] = values
            self._details[(member.id, member.sae, 0)] = details

    def _sae_width(self, case: Case) -> int:
        """The SAE's width: from the loaded SAE, else as its id or config states it, else loaded to be read."""
        if case.sae not in self._saes:
            width = sae_width(case)
            if width is not None:
                return width
        try:
            return self.sae(case.sae).cfg.d_sae
        except UnusableSAE:
            return 0  # it fails alone when its own item runs, and takes no room in a pass

    def _pass_base_bytes(self, model, case: Case) -> int:
        """What a pass of `case`'s rows holds besides its SAEs: the model's weights and one batch through it."""
        backend = backend_of(model)
        config = {"hidden_size": backend.d_model, "num_hidden_layers": backend.n_layers, "vocab_size": backend.d_vocab}
        return backend.weight_bytes() + batch_bytes(config, case.batch_size, case.context)

    def _release_saes(self, specs: set[str]) -> None:
        """Drop these SAEs from memory (their fingerprints kept): a pass split to fit holds only its own."""
        for spec in specs:
            self.sae_fingerprint(spec)
            del self._saes[spec]
            self._checked.pop(spec, None)


def sae_fit_problem(sae, case: Case, d_model: int | None = None) -> str | None:
    """Why `sae` cannot stand in `case` (another hook than its config names, unless the case allows it with a
    reason; another input width than the model's), or None."""
    hook = getattr(sae.cfg.metadata, "hook_name", None)
    if hook and hook != case.hook and not case.hook_mismatch_ok:
        return (
            f"its config says it reads {hook}, but case {case.id} splices it at {case.hook}. Use an SAE trained "
            f'at {case.hook}, or set hook_mismatch_ok = "why" in the case ({case.file}) if this is meant'
        )
    if d_model is not None and sae.cfg.d_in != d_model:
        return f"it reads d_in={sae.cfg.d_in} activations, but the model of case {case.id} has d_model={d_model}"
    return None


def _transfer_values(report) -> tuple[dict[str, float | None], tuple[dict[str, str], dict[str, Tensor]]]:
    """A transfer report as (flat metric values, (undefined reasons, per-feature vectors))."""
    vectors = {} if report.feature_density is None else {"feature_density": report.feature_density}
    return {k: v for k, v in report.to_row().items() if not k.startswith("setting_")}, (
        dict(report.undefined),
        vectors,
    )
