"""A token set's prefix, run once and handed to the mean-norm estimate, the shared pass and the paired pass, gives
exactly what each computes by itself; the executor's planned runs reach the forward-pass floor."""

import pytest
import torch

from sae_bench.engine.evaluate import EvalConfig, PassCost, estimate_scaling_factor, evaluate_shared
from sae_bench.engine.forward_cost import ForwardCost
from sae_bench.engine.metrics import FLOAT32_ROUNDING
from sae_bench.engine.outliers import OutlierPolicy
from sae_bench.engine.prefix import run_prefix
from sae_bench.engine.universality import PairedConfig, evaluate_universality
from tests.conftest import D_MODEL, N_LAYERS, standard_sae, tiny_model
from tests.engine.test_shared_pass import same_report
from tests.engine.test_universality import nudged

HOOK = "blocks.2.hook_resid_pre"


def test_a_given_prefix_changes_no_number(model, tokens):
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, :2] = False
    prefix = run_prefix(model, tokens, HOOK, 3)
    assert estimate_scaling_factor(model, tokens, HOOK, batch_size=3, position_mask=mask) == estimate_scaling_factor(
        model, tokens, HOOK, position_mask=mask, prefix=prefix
    )
    saes = [standard_sae(D_MODEL, 12, seed=1), standard_sae(D_MODEL, 12, seed=2)]
    configs = [
        EvalConfig(hook=HOOK, batch_size=3, outliers=p, progress=False) for p in (None, OutlierPolicy(3.5, norm="raw"))
    ]
    pairs = [(sae, config) for sae in saes for config in configs]
    served = evaluate_shared(model, pairs, tokens, position_mask=mask, prefix=prefix)
    for alone, given in zip(evaluate_shared(model, pairs, tokens, position_mask=mask), served, strict=True):
        same_report(given, alone)


def test_a_given_prefix_serves_the_paired_pass_unchanged(model, tokens, random_sae):
    finetuned = nudged()
    config = PairedConfig(hook=HOOK, batch_size=3, progress=False)
    alone = evaluate_universality(model, finetuned, random_sae, tokens, config)
    served = evaluate_universality(
        model,
        finetuned,
        random_sae,
        tokens,
        config,
        prefix_base=run_prefix(model, tokens, HOOK, 3),
        prefix_finetuned=run_prefix(finetuned, tokens, HOOK, 3),
    )
    assert served.summary() == alone.summary()
    torch.testing.assert_close(
        served.activation_similarity, alone.activation_similarity, rtol=0, atol=0, equal_nan=True
    )


def test_a_prefix_of_other_batches_is_refused_with_both_shapes(model, tokens):
    config = EvalConfig(hook=HOOK, batch_size=3, progress=False)
    with pytest.raises(ValueError, match=r"batch size 4.*not those of this pass.*batch size 3"):
        evaluate_shared(model, [(standard_sae(D_MODEL, 12), config)], tokens, prefix=run_prefix(model, tokens, HOOK, 4))
    with pytest.raises(ValueError, match=r"hook blocks\.1\.hook_resid_pre.*hook blocks\.2\.hook_resid_pre"):
        prefix = run_prefix(model, tokens, "blocks.1.hook_resid_pre", 3)
        evaluate_shared(model, [(standard_sae(D_MODEL, 12), config)], tokens, prefix=prefix)


def test_forward_cost_counts_block_rows_and_the_pass_reports_its_continuations(tokens):
    """The hooks count what ran; PassCost says what the pass continued: clean, one spliced residual per distinct one
    (one SAE twice identically, one other: 3 × n rows) and, for the zero ablation, one all-zero row for the whole pass
    (every batch's, the shorter last one's included, is the same row)."""
    model, cost, pass_cost = tiny_model(), ForwardCost(), PassCost()
    cost.watch("m", model)
    a, b = standard_sae(D_MODEL, 12, seed=1), standard_sae(D_MODEL, 12, seed=2)
    config = EvalConfig(hook=HOOK, batch_size=3, progress=False)
    evaluate_shared(model, [(a, config), (b, config), (a, config)], tokens, cost=pass_cost)
    n_seq = tokens.shape[0]
    continued = 3 * n_seq + 1
    assert pass_cost.continued_rows == continued
    assert cost.run["m"] == n_seq * 2 + continued * (N_LAYERS - 2)
    with cost.uncounted():
        model(tokens)
    assert cost.run["m"] == n_seq * 2 + continued * (N_LAYERS - 2)
    model.reset_hooks()  # the counting hooks are permanent
    model(tokens)
    assert cost.run["m"] == n_seq * 2 + continued * (N_LAYERS - 2) + n_seq * N_LAYERS


@pytest.mark.full
def test_a_planned_family_with_paired_and_chat_cases_runs_at_the_floor():
    """Every tiny-qwen2 case (filtered, unfiltered, rollouts, user prompts, the paired base-vs-chat case): the block
    rows run equal the floor, rollouts are not counted, and no prefix outlives its last case."""
    from sae_bench.cases.registry import SHIPPED_CASES, load_registry
    from sae_bench.execution.executor import CaseExecutor

    cases = sorted((c for c in load_registry(SHIPPED_CASES) if c.family == "tiny-qwen2"), key=lambda c: c.model_name)
    assert any(c.paired for c in cases) and any(c.mask == "rollout" for c in cases)
    executor = CaseExecutor()
    executor.plan(cases)
    for case in cases:
        executor.measure(case)
        executor.done(case)
    table = executor.cost.table().set_index("model")
    assert table.loc["total", "fpe_run"] == table.loc["total", "fpe_floor"] > 0
    assert executor._prefixes == {}


def test_identical_zero_ablated_rows_continue_once_with_the_same_result(model, tokens):
    """Rows ablated at every position are all zeros: one runs, each gets its result, equal to running them all;
    rows with unablated positions keep their own continuation."""
    from sae_bench.engine.evaluate import _final_residuals
    from sae_bench.engine.splicing import final_residual_from_hook, resolve_hook, run_to_hook, zero_ablated_residual

    site = resolve_hook(model, HOOK)
    x = run_to_hook(model, tokens, site)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[0, 3] = False  # row 0 keeps one position: it is not all zeros
    zero = zero_ablated_residual(x, mask)
    for stack in (True, False):
        memo = {}
        finals, continued = _final_residuals(model, site, {"clean": x, "zero": zero}, stack, memo)
        assert continued == x.shape[0] + 2
        assert finals["zero"].rows.shape[0] == 2
        assert torch.equal(finals["zero"].expand(), final_residual_from_hook(model, zero, site))
        assert torch.equal(finals["clean"], final_residual_from_hook(model, x, site))
        # the next batch: equal zero-ablated rows are not continued again, and keep their result; other ones are
        again, continued = _final_residuals(model, site, {"clean": x, "zero": zero.clone()}, stack, memo)
        assert continued == x.shape[0] and torch.equal(again["zero"].expand(), finals["zero"].expand())
        other = zero_ablated_residual(x, torch.ones(x.shape[:2], dtype=torch.bool))
        third, continued = _final_residuals(model, site, {"clean": x, "zero": other}, stack, memo)
        assert continued == x.shape[0] + 1
        assert torch.equal(third["zero"].expand(), final_residual_from_hook(model, other, site))


def test_scoring_a_distinct_rows_continuation_equals_scoring_every_row(model, tokens):
    """The zero continuation's distinct rows are unembedded once and copied to each counted prediction: the same
    NLL and KL as unembedding every row, for any counted mask and chunk (one chunk too small for the shortcut)."""
    from sae_bench.engine.evaluate import _final_residuals
    from sae_bench.engine.splicing import resolve_hook, run_to_hook, zero_ablated_residual
    from sae_bench.engine.transfer_report import score_predictions

    site = resolve_hook(model, HOOK)
    x = run_to_hook(model, tokens, site)
    zero = zero_ablated_residual(x, torch.ones(x.shape[:2], dtype=torch.bool))
    finals, _ = _final_residuals(model, site, {"clean": x, "zero": zero}, True, {})
    counted = torch.rand(tokens[:, 1:].shape, generator=torch.Generator().manual_seed(0)) < 0.7
    for chunk in (7, 1000):
        distinct = score_predictions(model, finals, tokens, counted, chunk)
        every = score_predictions(model, {**finals, "zero": finals["zero"].expand()}, tokens, counted, chunk)
        for key in ("clean", "zero"):
            torch.testing.assert_close(distinct.nll[key], every.nll[key], rtol=FLOAT32_ROUNDING, atol=FLOAT32_ROUNDING)
        torch.testing.assert_close(distinct.kl["zero"], every.kl["zero"], rtol=FLOAT32_ROUNDING, atol=FLOAT32_ROUNDING)
