"""The one-pass engine: identities on hand-built SAEs, masks, outliers, structure (counted), and bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_bench.engine.evaluate import EvalConfig, estimate_scaling_factor, evaluate_transfer
from sae_bench.engine.metrics import FLOAT32_ROUNDING
from sae_bench.engine.outliers import OutlierPolicy
from sae_bench.engine.transfer_report import TransferReport
from sae_bench.expectations.rules import FLOAT_FLOOR_REL
from tests.conftest import D_MODEL, D_VOCAB, N_LAYERS, identity_sae, rows_per_layer, standard_sae, tiny_model, zero_sae

FLOAT32_FORWARD = {"rel": FLOAT_FLOOR_REL, "abs": FLOAT32_ROUNDING}
"""Two float32 forward passes that differ only in their shapes (rows cut, chunks split) reorder float32 sums: a CE
or KL over the vocabulary then moves by about FLOAT_FLOOR_REL of its value (the floor expectation tolerances use),
and a value near zero by FLOAT32_ROUNDING nats (the metrics' rounding rule)."""

HOOKS = [f"blocks.{layer}.hook_resid_{kind}" for layer in range(N_LAYERS) for kind in ("pre", "post")]


def run(model, sae, tokens, hook="blocks.2.hook_resid_pre", position_mask=None, **config):
    config.setdefault("batch_size", 4)
    return evaluate_transfer(
        model, sae, tokens, EvalConfig(hook=hook, progress=False, **config), position_mask=position_mask
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_identity_sae_recovers_everything(model, tokens, hook):
    report = run(model, identity_sae(D_MODEL), tokens, hook=hook)
    assert report.explained_variance == 1.0
    assert report.mse == 0.0
    assert report.ce_spliced == report.ce_clean
    assert report.ce_loss_recovered == 1.0
    assert report.kl_spliced == 0.0
    assert report.kl_score == 1.0
    assert report.undefined == {}


@pytest.mark.parametrize("hook", [h for h in HOOKS if h.endswith("pre")])
def test_zero_sae_at_resid_pre_is_zero_ablation(model, tokens, hook):
    report = run(model, zero_sae(D_MODEL), tokens, hook=hook)
    assert report.ce_spliced == report.ce_zero_ablation
    assert report.ce_loss_recovered == 0.0
    assert report.kl_spliced == report.kl_zero


def test_zero_ablation_of_a_bias_free_rmsnorm_model_is_uniform(model, tokens):
    report = run(model, identity_sae(D_MODEL), tokens)
    assert report.ce_zero_ablation == pytest.approx(math.log(D_VOCAB), abs=1e-6)


def test_reports_count_tokens_and_predictions(model, tokens, random_sae):
    report = run(model, random_sae, tokens)
    n_seq, pos = tokens.shape
    assert report.n_tokens_reconstructed == n_seq * pos
    assert report.n_predictions == n_seq * (pos - 1)
    assert report.feature_density.shape == (random_sae.cfg.d_sae,)
    assert set(report.to_row()) >= set(report.metric_docs())


@settings(max_examples=15, deadline=None)
@given(batch_size=st.integers(1, 10), stack=st.booleans(), chunk=st.one_of(st.none(), st.integers(1, 40)))
def test_results_do_not_depend_on_batching(model, tokens, random_sae, batch_size, stack, chunk):
    reference = run(model, random_sae, tokens, batch_size=10)
    report = run(
        model, random_sae, tokens, batch_size=batch_size, stack_continuations=stack, logit_rows_per_chunk=chunk
    )
    for name in (
        "l0",
        "mse",
        "explained_variance",
        "ce_clean",
        "ce_spliced",
        "ce_zero_ablation",
        "ce_loss_recovered",
        "kl_spliced",
        "kl_zero",
    ):
        assert getattr(report, name) == pytest.approx(getattr(reference, name), rel=1e-5), name


@settings(max_examples=10, deadline=None)
@given(chunk=st.integers(1, 70))
def test_scoring_in_chunks_keeps_per_batch_reductions(model, tokens, random_sae, chunk):
    """Chunks split a batch's predictions, never its per-batch means (Kissane's batch-mean CE recovered)."""
    reference = run(model, random_sae, tokens)
    report = run(model, random_sae, tokens, logit_rows_per_chunk=chunk)
    for name in ("ce_loss_recovered_batch_mean", "ce_clean", "kl_spliced"):
        assert getattr(report, name) == pytest.approx(getattr(reference, name), **FLOAT32_FORWARD), name


def test_dtype_option_runs_the_model_in_that_dtype_and_the_sae_in_its_own(tokens, random_sae):
    reference = run(tiny_model(), random_sae, tokens)
    model, sae = tiny_model(), standard_sae(D_MODEL, 48, seed=3)
    report = run(model, sae, tokens, dtype=torch.float64)
    assert model.W_U.dtype == torch.float64
    assert sae.W_dec.dtype == torch.float32
    assert report.settings["dtype"] == "float64"
    for name in ("l0", "explained_variance", "ce_spliced", "kl_spliced"):
        assert getattr(report, name) == pytest.approx(getattr(reference, name), rel=1e-4), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_splices_a_float32_sae_and_scores_in_float32(tokens, random_sae, dtype):
    """The SAE reads the half-precision residual cast to float32 and its reconstruction is cast back: metrics stay
    near the float32 run's (bfloat16 keeps 8 bits of mantissa, float16 11)."""
    reference = run(tiny_model(), random_sae, tokens)
    report = run(tiny_model(), random_sae, tokens, dtype=dtype)
    assert random_sae.W_dec.dtype == torch.float32
    assert report.settings["dtype"] == str(dtype).removeprefix("torch.")
    assert report.batches_overflowed == report.batches_dropped == 0
    rel = 0.05 if dtype == torch.bfloat16 else 0.01
    for name in ("explained_variance", "ce_clean", "ce_spliced", "ce_loss_recovered", "kl_spliced"):
        assert getattr(report, name) == pytest.approx(getattr(reference, name), rel=rel), name


def test_a_float16_forward_that_overflows_leaves_its_metrics_undefined_and_counts_the_batches(tokens):
    """A reconstruction beyond float16's range (65504) becomes inf when cast back to the residual's dtype: every CE
    and KL of the spliced run is undefined, naming how many batches overflowed; the clean and zero runs are not."""
    sae = standard_sae(D_MODEL, 48, seed=3)
    with torch.no_grad():
        sae.b_dec.fill_(1e5)
    report = run(tiny_model(), sae, tokens, dtype=torch.float16)
    n_batches = math.ceil(tokens.shape[0] / 4)
    assert report.batches_overflowed == n_batches
    assert report.ce_spliced is None and report.kl_spliced is None and report.ce_loss_recovered is None
    assert f"{n_batches} batch(es) of the spliced run overflowed" in report.undefined["ce_spliced"]
    assert "needs ce_spliced" in report.undefined["ce_loss_recovered"]
    assert report.ce_clean is not None and report.ce_zero_ablation is not None
    assert run(tiny_model(), sae, tokens).ce_spliced is not None  # in float32 the same SAE's output is finite


def test_position_mask_limits_every_metric(model, tokens, random_sae):
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 8:] = True
    report = run(model, random_sae, tokens, position_mask=mask)
    assert report.n_tokens_reconstructed == int(mask.sum())
    assert report.n_predictions == int(mask[:, :-1].sum())
    identity = run(model, identity_sae(D_MODEL), tokens, position_mask=mask)
    assert identity.ce_loss_recovered == 1.0


def test_outlier_positions_stay_clean_and_leave_the_reconstruction_metrics(model, tokens):
    x_norm_cut = 3.5  # raw norms of this model's resid_pre sit around 2–6
    policy = OutlierPolicy(threshold=x_norm_cut, norm="raw", count_in_ce=True)
    report = run(model, zero_sae(D_MODEL), tokens, outliers=policy)
    unfiltered = run(model, zero_sae(D_MODEL), tokens)
    assert 0 < report.outliers.n_outliers < tokens.numel()
    assert report.n_tokens_reconstructed == tokens.numel() - report.outliers.n_outliers
    assert report.ce_spliced < unfiltered.ce_spliced  # outliers kept their clean activation
    dropped = run(model, zero_sae(D_MODEL), tokens, outliers=OutlierPolicy(x_norm_cut, "raw", count_in_ce=False))
    assert dropped.n_predictions < report.n_predictions


def test_outlier_breakdown_accounts_for_every_outlier(model, tokens):
    report = run(model, zero_sae(D_MODEL), tokens, outliers=OutlierPolicy(threshold=3.5, norm="raw"))
    breakdown = report.outliers
    assert breakdown.n_positions == tokens.numel()
    parts = breakdown.n_bos + breakdown.n_early_position + breakdown.n_newline + breakdown.n_other
    assert parts == breakdown.n_outliers > 0
    assert sum(breakdown.shares().values()) == pytest.approx(1.0)
    assert report.to_row()["outlier_fraction"] == breakdown.n_outliers / tokens.numel()


def test_scaled_outlier_threshold_and_scaling_factor(model, tokens):
    factor = estimate_scaling_factor(model, tokens, "blocks.2.hook_resid_pre")
    x = model(tokens, stop_at_layer=2)
    assert (x * factor).norm(dim=-1).mean().item() == pytest.approx(math.sqrt(D_MODEL), rel=1e-5)
    report = run(
        model,
        identity_sae(D_MODEL),
        tokens,
        scaling_factor=factor,
        scaling_factor_source="evaluated model",
        outliers=OutlierPolicy(threshold=1.5 * math.sqrt(D_MODEL)),
    )
    assert report.settings["scaling_factor_source"] == "evaluated model"
    assert report.explained_variance == pytest.approx(1.0, abs=1e-12)
    assert report.mse == pytest.approx(0.0, abs=1e-10)


def test_special_tokens_are_excluded_and_kept_clean(model, tokens):
    special = (int(tokens[0, 0]), int(tokens[0, 5]))
    report = run(model, zero_sae(D_MODEL), tokens, exclude_special_tokens=True, special_token_ids=special)
    n_special = int(torch.isin(tokens, torch.tensor(special)).sum())
    assert report.n_tokens_reconstructed == tokens.numel() - n_special


def test_engine_structure_is_one_prefix_pass_and_three_continuations(tokens, random_sae):
    """Counted, not timed: rows through each block per evaluation."""
    layer = 2
    for stack in (True, False):
        model = tiny_model()
        rows = rows_per_layer(model)
        run(model, random_sae, tokens, hook=f"blocks.{layer}.hook_resid_pre", stack_continuations=stack)
        n_seq = tokens.shape[0]
        # clean and spliced rows; the zero-ablated rows are all zeros (every position ablated): one for the pass
        assert rows == [n_seq] * layer + [2 * n_seq + 1] * (N_LAYERS - layer), stack


def test_unknown_hook_lists_the_valid_ones(model, tokens, random_sae):
    with pytest.raises(ValueError, match=r"blocks\.9\.hook_resid_pre.*does not exist.*Valid hooks") as err:
        run(model, random_sae, tokens, hook="blocks.9.hook_resid_pre")
    assert "blocks.3.hook_resid_post" in str(err.value)
    with pytest.raises(ValueError, match="Did you mean 'blocks.1.hook_resid_pre'"):
        run(model, random_sae, tokens, hook="blocks.1.hook_resid_pr")
    with pytest.raises(ValueError, match="is not a residual-stream hook"):
        run(model, random_sae, tokens, hook="blocks.1.hook_mlp_out")


def test_sae_width_mismatch_names_both_widths(model, tokens):
    with pytest.raises(ValueError, match=r"d_in=24.*d_model=16"):
        run(model, standard_sae(24, 8), tokens)


def test_empty_token_set_after_filtering_is_an_error(model, tokens, random_sae):
    with pytest.raises(ValueError, match="no positions left"):
        run(model, random_sae, tokens, position_mask=torch.zeros_like(tokens, dtype=torch.bool))
    with pytest.raises(ValueError, match="no positions left.*outlier"):
        run(model, random_sae, tokens, outliers=OutlierPolicy(threshold=1e-6, norm="raw"))


def test_nan_activations_name_their_positions(tokens, random_sae):
    model = tiny_model()
    with torch.no_grad():
        model.W_E[int(tokens[3, 4])] = math.nan
    with pytest.raises(ValueError, match=r"NaN/Inf activations, first \(sequence, position\): \[\(\d+, \d+\)"):
        run(model, random_sae, tokens)


def test_an_sae_with_a_nan_decoder_row_is_named_never_returned_as_nan(model, tokens):
    sae = standard_sae(D_MODEL, 8)
    with torch.no_grad():
        sae.W_dec[5] = math.nan
        sae.b_enc.fill_(10.0)  # every feature fires, so the NaN row reaches every reconstruction
    with pytest.raises(ValueError, match=r"SAE reconstruction: \d+ positions have NaN/Inf") as err:
        run(model, sae, tokens)
    assert "StandardSAE (d_sae 8" in str(err.value) and "['W_dec'] (decoder rows [5])" in str(err.value)


def test_an_sae_with_finite_weights_whose_output_overflows_is_named(model, tokens):
    sae = standard_sae(D_MODEL, 8)
    with torch.no_grad():
        sae.W_dec.fill_(1e38)  # finite weights, an infinite reconstruction
        sae.b_enc.fill_(10.0)
    with pytest.raises(ValueError, match=r"SAE reconstruction.*its weights are finite, so the input overflows it"):
        run(model, sae, tokens)


def test_token_ids_outside_the_vocabulary_are_rejected_with_the_id(model, tokens, random_sae):
    bad = tokens.clone()
    bad[2, 7] = D_VOCAB + 3
    with pytest.raises(ValueError, match=rf"ids \[{D_VOCAB + 3}\] first at \(sequence, position\) \[\(2, 7\)\]"):
        run(model, random_sae, bad)
    bad[2, 7] = -1
    with pytest.raises(ValueError, match=rf"outside the model's vocabulary \[0, {D_VOCAB}\)"):
        run(model, random_sae, bad)


def test_bad_config_is_rejected_early():
    with pytest.raises(ValueError, match="needs `scaling_factor`"):
        EvalConfig(hook="blocks.0.hook_resid_pre", outliers=OutlierPolicy(threshold=50))
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(hook="blocks.0.hook_resid_pre", batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        evaluate_transfer(
            tiny_model(),
            identity_sae(D_MODEL),
            torch.zeros(3, 5, dtype=torch.long),
            EvalConfig(hook="blocks.0.hook_resid_pre"),
            position_mask=torch.ones(3, 4, dtype=torch.bool),
        )


def test_only_counted_predictions_are_unembedded_a_chunk_at_a_time(model, tokens, random_sae):
    """Logit memory is O(chunk × d_vocab): no call unembeds more than `chunk` rows, and masked rows never are."""
    rows_seen: list[int] = []
    handle = model.unembed.register_forward_hook(lambda _, inputs, __: rows_seen.append(inputs[0].shape[1]))
    try:
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, 3:7] = True
        run(model, random_sae, tokens, position_mask=mask, logit_rows_per_chunk=5)
    finally:
        handle.remove()
    n_counted = tokens.shape[0] * 4  # positions 3..6 predict 4..7
    assert max(rows_seen) <= 5
    assert sum(rows_seen) == 3 * n_counted  # clean, spliced and zero-ablated, each row once


def test_pooled_per_token_ev_does_not_depend_on_batch_size(model, tokens, random_sae):
    """Kissane's alpaca EV pools every masked token (issue: batch_size 1 used to average per-row EVs)."""
    values = []
    for batch_size in (1, 8):
        config = EvalConfig(
            hook="blocks.2.hook_resid_pre", batch_size=batch_size, pooled_per_token_ev=True, progress=False
        )
        values.append(evaluate_transfer(model, random_sae, tokens, config))
    assert values[0].explained_variance_per_token_pooled == pytest.approx(
        values[1].explained_variance_per_token_pooled, rel=1e-9
    )
    assert values[0].explained_variance_per_token != pytest.approx(values[1].explained_variance_per_token, rel=1e-6)
    off = evaluate_transfer(model, random_sae, tokens, EvalConfig(hook="blocks.2.hook_resid_pre", progress=False))
    assert off.explained_variance_per_token_pooled is None


def test_a_causal_model_runs_each_batch_only_as_far_as_its_mask_reads(model, tokens, random_sae, monkeypatch):
    """Batches are cut after the token that follows their last evaluated position: the report is the one the
    whole rows give."""
    from sae_bench.engine import evaluate
    from sae_bench.engine.token_batches import TokenBatches

    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 1:4] = True
    mask[0, 6] = True
    widths = [b.tokens.shape[1] for b in TokenBatches(tokens, mask, 4, causal=True)]
    assert widths == [8, 5, 5]  # rows 0-3 read to position 6 and its target 7; the others to 3 and 4
    cut = run(model, random_sae, tokens, position_mask=mask)
    monkeypatch.setattr(evaluate, "is_causal", lambda model: False)
    whole = run(model, random_sae, tokens, position_mask=mask)
    assert cut.undefined == whole.undefined
    for name in TransferReport.metric_docs():
        if getattr(whole, name) is not None:
            assert getattr(cut, name) == pytest.approx(getattr(whole, name), **FLOAT32_FORWARD), name
