"""Which planned cases share one pass (one model, batch size and token set, at any hooks), and how the SAEs of a
shared pass split over passes where they do not fit the device's memory together (`memory.split_for_memory`)."""

from __future__ import annotations

from collections.abc import Sequence

from sae_bench.cases.registry import Case
from sae_bench.engine.backends import backend_of
from sae_bench.errors import UnusableSAE
from sae_bench.execution.memory import batch_bytes, sae_width, split_for_memory
from sae_bench.execution.results_table import ResultsTable
from sae_bench.execution.sources_cache import SourcesCache


class PassPlanner:
    """The cases a session plans to measure, grouped into shared passes that fit `device_memory` bytes."""

    def __init__(self, sources: SourcesCache, device_memory: float | None):
        self.sources, self.device_memory = sources, device_memory
        self.planned: dict[str, Case] = {}

    def plan(self, cases: Sequence[Case]) -> None:
        self.planned = {case.id: case for case in cases}

    def finish(self, case: Case) -> bool:
        """Take a finished case off the plan; False when it was not planned."""
        return self.planned.pop(case.id, None) is not None

    def shared_key(self, case: Case) -> tuple:
        """Cases with the same key share a pass: one model (spec and dtype), batch size and token set, at any hooks."""
        return (case.model_key, case.batch_size, self.sources.token_key(case))

    def group(self, case: Case, results: ResultsTable) -> list[Case]:
        """`case` and every planned, not yet settled transfer case that can share its pass."""
        key = self.shared_key(case)
        return [case] + [
            other
            for other in self.planned.values()
            if other.id != case.id
            and not other.paired
            and other.model_key == case.model_key  # checked first: the token key of another model would load it
            and not results.settled(other)
            and self.shared_key(other) == key
        ]

    def passes(self, case: Case, group: list[Case]) -> list[list[Case]]:
        """The group's cases split over passes whose SAEs fit the device's memory beside the model and a batch."""
        model = self.sources.model(case.model_key)
        return split_for_memory(
            group,
            self.sae_width,
            base=self.pass_base_bytes(model, case),
            d_model=backend_of(model).d_model,
            memory=self.device_memory,
        )

    def sae_width(self, case: Case) -> int:
        """The SAE's width: from the loaded SAE, else as its id or config states it, else loaded to be read."""
        if case.sae not in self.sources.loaded_saes():
            width = sae_width(case)
            if width is not None:
                return width
        try:
            return self.sources.sae(case.sae).cfg.d_sae
        except UnusableSAE:
            return 0  # it fails alone when its own item runs, and takes no room in a pass

    @staticmethod
    def pass_base_bytes(model, case: Case) -> int:
        """What a pass of `case`'s rows holds besides its SAEs: the model's weights and one batch through it."""
        backend = backend_of(model)
        config = {"hidden_size": backend.d_model, "num_hidden_layers": backend.n_layers, "vocab_size": backend.d_vocab}
        return backend.weight_bytes() + batch_bytes(config, case.batch_size, case.context, dtype=case.dtype)
