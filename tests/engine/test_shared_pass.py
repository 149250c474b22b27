"""One shared pass over several SAEs and variants gives each pair exactly what it gets alone (the same float64
sums), and runs the clean and zero-ablated continuations once."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_bench.engine.evaluate import EvalConfig, evaluate_shared, evaluate_transfer
from sae_bench.engine.outliers import OutlierPolicy
from sae_bench.engine.transfer_report import TransferReport
from tests.conftest import D_MODEL, N_LAYERS, identity_sae, rows_per_layer, standard_sae, tiny_model

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
    rows = rows_per_layer(model)
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


# --- several hooks in one pass (a release's SAEs at every layer) ---------------------------------------------------

HOOKS = [f"blocks.{layer}.hook_resid_{kind}" for layer in range(N_LAYERS) for kind in ("pre", "post")]


def close_report(shared: TransferReport, alone: TransferReport) -> None:
    """Equal to float32 rounding: the clean run is one forward, not a continuation stacked with others."""
    from sae_bench.engine.metrics import FLOAT32_ROUNDING
    from sae_bench.expectations.rules import FLOAT_FLOOR_REL

    for name in TransferReport.metric_docs():
        got, expected = getattr(shared, name), getattr(alone, name)
        assert (got is None) == (expected is None), name
        if expected is not None:
            assert got == pytest.approx(expected, rel=FLOAT_FLOOR_REL, abs=FLOAT32_ROUNDING), name
    assert shared.outliers == alone.outliers and shared.undefined.keys() == alone.undefined.keys()
    assert torch.equal(shared.feature_density, alone.feature_density)


@settings(max_examples=20, deadline=None)
@given(
    hooks=st.lists(st.sampled_from(HOOKS), min_size=2, max_size=4),
    policies=st.lists(st.sampled_from(POLICIES), min_size=4, max_size=4),
    batch_size=st.integers(1, 6),
    masked=st.booleans(),
)
def test_a_pass_over_several_hooks_equals_each_pair_alone(model, tokens, hooks, policies, batch_size, masked):
    mask = None
    if masked:
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[:, :3] = False
        mask[1, 5:] = False
    pairs = [
        (
            standard_sae(D_MODEL, 12, seed=i),
            EvalConfig(hook=hook, batch_size=batch_size, outliers=policy, progress=False),
        )
        for i, (hook, policy) in enumerate(zip(hooks, policies, strict=False))
    ]
    try:
        alone = [evaluate_transfer(model, sae, tokens, config, position_mask=mask) for sae, config in pairs]
    except ValueError:  # an outlier threshold that leaves a hook nothing to evaluate: refused alone as together
        with pytest.raises(ValueError, match="no positions left"):
            evaluate_shared(model, pairs, tokens, position_mask=mask)
        return
    shared = evaluate_shared(model, pairs, tokens, position_mask=mask)
    for (_, config), report, expected in zip(pairs, shared, alone, strict=True):
        assert report.hook == config.hook
        close_report(report, expected)


def test_several_hooks_run_one_clean_forward_and_continue_each_hook_once(tokens):
    """Counted, not timed. Hooks at layers 1 and 3: one clean forward through every block; from blocks.1 its two
    SAEs' spliced residuals and one all-zero row; from blocks.3 one spliced residual and one all-zero row."""
    from sae_bench.engine.evaluate import PassCost

    model = tiny_model()
    n_seq, rows = tokens.shape[0], rows_per_layer(model)
    config = {layer: EvalConfig(hook=f"blocks.{layer}.hook_resid_pre", batch_size=n_seq) for layer in (1, 3)}
    saes = [standard_sae(D_MODEL, 12, seed=i) for i in range(3)]
    cost = PassCost()
    evaluate_shared(model, [(saes[0], config[1]), (saes[1], config[1]), (saes[2], config[3])], tokens, cost=cost)
    from_1, from_3 = 2 * n_seq + 1, n_seq + 1
    assert rows == [n_seq, n_seq + from_1, n_seq + from_1, n_seq + from_1 + from_3][:N_LAYERS]
    assert cost.block_rows == sum(rows)  # what the pass says it needed is what ran: the floor
