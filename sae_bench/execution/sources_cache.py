"""What a run loads, each once: models (released after the last planned case that needs them), SAEs (checked when
loaded, their fingerprints kept after they are dropped), each case's token rows and the chat rollouts (cached on
disk). The executor asks for them; nothing here evaluates."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from sae_bench.cases.registry import CHAT_MASKS, Case, ModelKey
from sae_bench.engine.backends import backend_of, torch_dtype
from sae_bench.engine.forward_cost import ForwardCost
from sae_bench.errors import UnusableSAE
from sae_bench.precision import DEFAULT_DTYPE
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
    full_rows: Tensor | None = None
    """The rows before their first token was cut (`drop_first_token`), row for row with `tokens`; else None."""
    roles: Tensor | None = None
    """Chat rows: each position's role, user or assistant (`token_classes.ROLES`); else None."""


class SourcesCache:
    """Models, SAEs, token rows and rollouts of a run, each loaded once while it is needed."""

    def __init__(self, *, device: str, backend: str, cost: ForwardCost):
        self.device, self.backend, self.cost = device, backend, cost
        self._models: dict[ModelKey, object] = {}
        self._saes: dict[str, CheckedSae] = {}
        self._unusable_saes: dict[str, UnusableSAE] = {}
        self.fingerprints: dict[str, str] = {}
        """sha256 of each SAE's weights, kept after the SAE is dropped (and taken from Ray units)."""
        self._tokens: dict[tuple, CaseTokens] = {}
        self._tokenizer_ids: dict[str, str] = {}
        self._users: Counter[ModelKey] = Counter()
        self.model_loads: Counter[ModelKey] = Counter()
        """How often each model (spec and dtype) was loaded (once, while the executor lives)."""
        self.model_releases: Counter[ModelKey] = Counter()
        """How often each model was released after its last planned case."""

    # -- models and their lifetimes -------------------------------------------------------------------------------
    def model(self, key: ModelKey):
        """The model of `key`, loaded once in its dtype."""
        if key not in self._models:
            self._models[key] = load_model(
                key.spec, dtype=torch_dtype(key.dtype), device=self.device, backend=self.backend
            )
            self.model_loads[key] += 1
            self.cost.watch(str(key), self._models[key])
        return self._models[key]

    def plan(self, cases: Iterable[Case]) -> None:
        """Count the planned cases that need each model."""
        self._users = Counter(key for case in cases for key in case.model_keys)

    def done(self, case: Case) -> None:
        """A planned case is finished: release each of its models that no remaining planned case needs."""
        for key in case.model_keys:
            self._users[key] -= 1
            if self._users[key] == 0 and key in self._models:
                del self._models[key]
                self.model_releases[key] += 1

    def live_models(self) -> list[ModelKey]:
        return list(self._models)

    # -- SAEs -----------------------------------------------------------------------------------------------------
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
        return self._saes[spec].sae

    def adopt(self, checked: CheckedSae) -> None:
        """Keep an SAE already loaded and checked (the gate's new SAE): it is neither loaded nor hashed again."""
        self._saes[checked.spec] = checked

    def loaded_saes(self) -> set[str]:
        return set(self._saes)

    def fingerprint(self, spec: str) -> str:
        """sha256 over the SAE's weights (`weights_sha256`), once per SAE."""
        if spec not in self.fingerprints:
            self.sae(spec)
            self.fingerprints[spec] = self._saes[spec].sha256
        return self.fingerprints[spec]

    def release_saes(self, specs: Iterable[str]) -> None:
        """Drop these SAEs from memory (their fingerprints kept): a pass split to fit holds only its own."""
        for spec in specs:
            self.fingerprint(spec)
            del self._saes[spec]

    # -- token rows -----------------------------------------------------------------------------------------------
    def tokens(self, case: Case) -> CaseTokens:
        """The case's rows: text read with the tokenizer of the base model (paired cases) or of the model, shared by
        every case with the same text, budget and tokenizer; chat rows are the case model's own rollouts."""
        key = self.token_key(case)
        if key not in self._tokens:
            self._tokens[key] = self._load_tokens(case, self.model(case.model_keys[0]))
        return self._tokens[key]

    def token_key(self, case: Case) -> tuple:
        """What decides a case's rows: text, budget, mask and the tokenizer that reads them (chat rows: the model,
        whose rollouts depend on its dtype), and the dtype the rows run in: two dtypes never share a token set, so
        never a prefix or a pass."""
        reader = case.model_keys[0]
        if reader.spec not in self._tokenizer_ids:  # remembered, so a released model is not loaded again for its key
            tokenizer = self.model(reader).tokenizer
            self._tokenizer_ids[reader.spec] = getattr(tokenizer, "name_or_path", None) or reader.spec
        reads = case.model if case.mask in CHAT_MASKS else self._tokenizer_ids[reader.spec]
        return (case.dataset, case.tokens, case.context, case.mask, case.drop_first_token, reads, case.dtype)

    def _load_tokens(self, case: Case, reader) -> CaseTokens:
        n_rows = max(1, case.tokens // case.context)
        if case.mask not in CHAT_MASKS:
            rows = full = load_dataset_rows(case.dataset, n_rows, case.context, reader)
            if case.drop_first_token:  # the rows every model then runs on, not a mask over the full rows
                rows = rows[:, 1:].contiguous()
            kept = full if case.drop_first_token else None  # what bands_from_full_rows reads
            if case.mask == "all":
                return CaseTokens(rows, None, kept)
            mask = torch.ones_like(rows, dtype=torch.bool)
            mask[:, 0] = False  # all-but-first
            return CaseTokens(rows, mask, kept)
        chat = self.rollouts(case, n_rows)
        return CaseTokens(chat.tokens, chat.mask(case.mask), roles=chat.roles())

    def rollouts(self, case: Case, n_rows: int) -> ChatRows:
        """Greedy rollouts of the case's model on the dataset's held-out prompts, cached on disk."""
        model = self.model(case.model_key)
        tokenizer = backend_of(model).tokenizer
        prompts = load_chat_prompts(case.dataset, tokenizer)[:n_rows]
        dataset = source_spec(case.dataset)
        template = None if dataset.scheme == "zoo" else dataset.params.get("template")
        stop = end_of_turn_id(tokenizer, chat_template=template is None)
        digest = hashlib.sha256(repr(prompts).encode()).hexdigest()
        key = f"{source_fingerprint(case.model)}|{digest}|{ROLLOUT_TOKENS}|{case.context}|torch {torch.__version__}"
        key += f"|generator {self.backend}"  # each backend generates its own rows (`ModelBackend.generate`)
        key += "" if case.dtype == DEFAULT_DTYPE else f"|{case.dtype}"  # greedy rows depend on the precision

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
