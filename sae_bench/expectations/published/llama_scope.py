"""Llama Scope's published spliced-loss figures (He et al. 2024, section 4.5.2) for the base-model SAE L15R-32x.

The paper gives the LM-loss increase alone (not its terms), so its tolerance cannot come from the terms'
(docs/design.md §6) and rests on a stated judgement until a first real run measures a spread. The Instruct figure
was measured on chat histories the paper does not release; the case runs alpaca rollouts instead, so that figure is
kept, unchecked, with the reason (a different token set is not like for like).
"""

from __future__ import annotations

from sae_bench.expectations.rules import ExpectationFile, MetricExpectation

LLAMA_SCOPE = (
    "He et al., Llama Scope: Extracting Millions of Features from Llama-3.1-8B with Sparse Autoencoders (2024), "
    "section 4.5.2"
)
_CAVEAT = (
    "SAELens serves a JumpReLU conversion of the released TopK SAE (one threshold for every feature, "
    "llama_scope loader); the paper's figure is the TopK SAE's"
)
_TOLERANCE = 0.05
_BASIS = (
    "the paper gives the delta alone, no terms or replicate, so no spread can be derived: ±0.05 (a third of the "
    "published 0.162) is a judgement, narrower than the gap to the Instruct figure (0.072); a first real run's "
    "measured spread should replace it"
)


NOT_STATED = "not stated"
"""The report does not say which dtype its evaluation ran Llama-3.1-8B in."""


def llama_scope() -> list[ExpectationFile]:
    """The base-model case (published delta, checked) and the Instruct rollout case (published delta, unchecked)."""
    provenance = {"kind": "published", "source": LLAMA_SCOPE, "caveat": _CAVEAT, "dtype": NOT_STATED}
    base = ExpectationFile(
        "llama-3.1-8b/base-sae@base",
        provenance | {"table": "section 4.5.2, L15R-32x on Llama-3.1-8B", "positions": "every non-special token"},
        {"ce_delta": MetricExpectation(0.162, "lower", _TOLERANCE, 0.0, _BASIS)},
    )
    instruct = ExpectationFile(
        "llama-3.1-8b/base-sae@instruct/rollout",
        provenance | {"table": "section 4.5.2, L15R-32x on Llama-3.1-8B-Instruct", "positions": "rollout tokens"},
        {},
        {
            "ce_delta": "published 0.090 on chat histories the paper does not release; this case measures the "
            "Instruct model's alpaca rollouts, not the same tokens (the claim base-sae-transfers-to-instruct "
            "carries the finding)"
        },
    )
    return [base, instruct]
