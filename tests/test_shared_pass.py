"""One shared pass over several SAEs and variants gives each pair exactly what it gets alone (the same float64
sums), and runs the clean and zero-ablated continuations once."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_bench.evaluate import EvalConfig, evaluate_shared, evaluate_transfer
from sae_bench.outliers import OutlierPolicy
from sae_bench.results import TransferReport
from tests.conftest import D_MODEL, N_LAYERS, identity_sae, standard_sae, tiny_model

HOOK = "blocks.2.hook_resid_pre"
POLICIES = [None, OutlierPolicy(3.5, norm="raw"), OutlierPolicy(3.5, norm="raw", count_in_ce=False)]


def same_report(shared: TransferReport, alone: TransferReport) -> None:
    for name in TransferReport.metric_docs():
        assert getattr(shared, name) == getattr(alone, name), name
    assert shared.outliers == alone.outliers and shared.undefined == alone.undefined
    assert torch.equal(shared.feature_density, alone.feature_density)


@st.composite
def variant(draw):
    """An SAE name and how it is spliced."""
    return {
        "sae": draw(st.sampled_from(["a", "b", "identity"])),
        "outliers": draw(st.sampled_from(POLICIES)),
        "exclude_special_tokens": draw(st.booleans()),
        "scaling_factor": draw(st.sampled_from([None, 0.5])),
    }


@settings(max_examples=25, deadline=None)
@given(
    chosen=st.lists(variant(), min_size=1, max_size=4),
    batch_size=st.integers(1, 6),
    masked=st.booleans(),
)
def test_a_shared_pass_equals_each_pair_alone(model, tokens, chosen, batch_size, masked):
    saes = {
        "a": standard_sae(D_MODEL, 12, seed=1),
        "b": standard_sae(D_MODEL, 12, seed=2),
        "identity": identity_sae(D_MODEL),
    }
    mask = None
    if masked:
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[:, :3] = False
    pairs = [
        (
            saes[v["sae"]],
            EvalConfig(
                hook=HOOK,
                batch_size=batch_size,
                outliers=v["outliers"],
                exclude_special_tokens=v["exclude_special_tokens"],
                special_token_ids=(int(tokens[0, 0]), int(tokens[1, 3])),
                scaling_factor=v["scaling_factor"],
                progress=False,
            ),
        )
        for v in chosen
    ]
    shared = evaluate_shared(model, pairs, tokens, position_mask=mask)
    for (sae, config), report in zip(pairs, shared, strict=True):
        same_report(report, evaluate_transfer(model, sae, tokens, config, position_mask=mask))


def test_the_clean_and_zero_continuations_run_once_for_every_variant(tokens):
    """Counted, not timed: rows through each block for three SAEs, one spliced twice identically."""
    model, layer = tiny_model(), 2
    a, b = standard_sae(D_MODEL, 12, seed=1), standard_sae(D_MODEL, 12, seed=2)
    config = EvalConfig(hook=f"blocks.{layer}.hook_resid_pre", batch_size=tokens.shape[0], progress=False)
    rows = [0] * N_LAYERS

    def count(tensor, hook):
        rows[int(hook.name.split(".")[1])] += tensor.shape[0]

    for i in range(N_LAYERS):
        model.add_hook(f"blocks.{i}.hook_resid_post", count)
    evaluate_shared(model, [(a, config), (b, config), (a, config)], tokens)
    n_seq = tokens.shape[0]
    # prefix once; then clean + two distinct spliced residuals (a's twice identical: shared) + one all-zero row
    assert rows == [n_seq] * layer + [3 * n_seq + 1] * (N_LAYERS - layer)


def test_variants_that_cannot_share_batches_are_refused(model, tokens):
    sae = standard_sae(D_MODEL, 12)
    with pytest.raises(ValueError, match=r"must agree on \['batch_size'\]"):
        evaluate_shared(
            model,
            [(sae, EvalConfig(hook=HOOK, batch_size=2)), (sae, EvalConfig(hook=HOOK, batch_size=3))],
            tokens,
        )
