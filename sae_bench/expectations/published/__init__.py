"""Hub-case expectations from the published results (docs/design.md §6): Kissane et al. (`kissane.py`), Kutsyk et al.
(`kutsyk.py`) and Llama Scope (`llama_scope.py`). Each value keeps the number as published, with provenance naming
its table and the positions it covers; each tolerance says what it rests on (no hub or GPU here to measure one);
every other metric of the case's groups is listed as unchecked with the reason. Hub cases no paper gives numbers
for (`NOT_PUBLISHED`) have no file: their first real run measures one.
"""

from __future__ import annotations

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.expectations.published.common import with_unchecked
from sae_bench.expectations.published.kissane import kissane
from sae_bench.expectations.published.kutsyk import kutsyk
from sae_bench.expectations.published.llama_scope import llama_scope
from sae_bench.expectations.rules import ExpectationFile

_GEMMA_SCOPE = "no published figure matches these cases' settings; the family's claims carry Gemma Scope's findings"
_GEMMA_SCOPE_2 = "Gemma Scope 2 publishes no evaluation numbers for its SAEs; the family's claims carry its statements"
NOT_PUBLISHED = {
    "gemma-2-2b": _GEMMA_SCOPE,
    "gemma-2-9b": _GEMMA_SCOPE,
    "gemma-3-270m": _GEMMA_SCOPE_2,
    "gemma-3-1b": _GEMMA_SCOPE_2,
}
"""Hub families without published numbers, and why: a first real run writes their expectation files."""


def published_expectations() -> list[ExpectationFile]:
    """Every hub expectation file derived from the published results, covering every metric of its case."""
    registry = load_registry(SHIPPED_CASES)
    return [with_unchecked(expected, registry.get(expected.case)) for expected in kissane() + kutsyk() + llama_scope()]
