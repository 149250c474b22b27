"""The paired pass: streaming per-feature statistics equal the pure functions on all activations."""

import pytest
import torch

from sae_bench.engine import metrics
from sae_bench.engine.universality import PairedConfig, evaluate_universality
from tests.conftest import D_MODEL, standard_sae, tiny_model

HOOK = "blocks.1.hook_resid_post"


def paired(base, finetuned, sae, tokens, **config):
    config.setdefault("batch_size", 3)
    return evaluate_universality(base, finetuned, sae, tokens, PairedConfig(hook=HOOK, progress=False, **config))


def nudged(seed: int = 0, amount: float = 0.05):
    """The tiny model with every weight nudged: a "mild fine-tune" of it."""
    model = tiny_model(seed=0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount * p.std() * torch.randn(p.shape, generator=gen))
    return model


def test_streaming_statistics_equal_pure_functions_on_all_activations(model, tokens, random_sae):
    finetuned = nudged()
    report = paired(model, finetuned, random_sae, tokens)
    f_b = random_sae.encode(model(tokens, stop_at_layer=2).reshape(-1, D_MODEL)).detach()
    f_f = random_sae.encode(finetuned(tokens, stop_at_layer=2).reshape(-1, D_MODEL)).detach()
    torch.testing.assert_close(report.density_base, metrics.feature_density(f_b), rtol=1e-12, atol=0)
    torch.testing.assert_close(report.density_finetuned, metrics.feature_density(f_f), rtol=1e-12, atol=0)
    expected = metrics.pearson_per_feature(f_b, f_f)
    assert torch.equal(torch.isnan(report.activation_similarity), torch.isnan(expected))
    defined = ~torch.isnan(expected)
    torch.testing.assert_close(report.activation_similarity[defined], expected[defined], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        report.dead_activation_error, metrics.dead_activation_error(f_b, f_f), rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(
        report.logit_similarity, metrics.logit_similarity(random_sae.W_dec, model.W_U, finetuned.W_U)
    )
    assert report.n_tokens == tokens.numel()


def test_a_model_against_itself_is_perfectly_universal(model, tokens, random_sae):
    report = paired(model, model, random_sae, tokens)
    defined = ~torch.isnan(report.activation_similarity)
    assert torch.allclose(report.activation_similarity[defined], torch.ones(int(defined.sum()), dtype=torch.float64))
    assert torch.allclose(report.logit_similarity, torch.ones_like(report.logit_similarity))
    assert float(report.dead_activation_error.abs().max()) == 0.0
    summary = report.summary()
    assert summary["residual_cosine"] == pytest.approx(1.0)
    assert summary["residual_distance"] == 0.0
    assert summary["n_dead_in_base_only"] == summary["n_dead_in_finetuned_only"] == 0


def test_bands_follow_the_density_rules(model, tokens):
    sae = standard_sae(D_MODEL, 40, seed=2)
    with torch.no_grad():
        sae.b_enc[:5] = -1e4  # never fire, in either model: dead in both, so in neither "exclusive" band
    report = paired(model, nudged(amount=0.3), sae, tokens)
    log_b, log_f = metrics.log_density(report.density_base), metrics.log_density(report.density_finetuned)
    regular = (log_b >= -5) & (log_b <= -1) & (log_f >= -5) & (log_f <= -1)
    assert torch.equal(report.regular, regular)
    assert not report.dead_in_base_only[:5].any() and not report.dead_in_finetuned_only[:5].any()
    summary = report.summary()
    assert summary["n_regular"] == int(regular.sum())
    assert summary["dead_fraction_base"] >= 5 / 40
    values = [v for v in summary.values() if isinstance(v, float)]
    assert all(v == v for v in values)  # no NaN in any summary


def test_position_mask_and_special_tokens_limit_the_pair(model, tokens, random_sae):
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 4:] = True
    report = paired(
        model, nudged(), random_sae, tokens, exclude_special_tokens=True, special_token_ids=(int(tokens[0, 6]),)
    )
    assert report.n_tokens == int((tokens != tokens[0, 6]).sum())
    masked = evaluate_universality(
        model, nudged(), random_sae, tokens, PairedConfig(hook=HOOK, progress=False), position_mask=mask
    )
    assert masked.n_tokens == int(mask.sum()) == masked.residual.n_tokens


def test_mismatched_vocabularies_are_refused(model, tokens, random_sae):
    other = tiny_model(d_vocab=70)
    with pytest.raises(ValueError, match="different vocabularies.*61 vs 70"):
        paired(model, other, random_sae, tokens)


def test_encoding_in_chunks_changes_nothing(model, tokens):
    """Wide SAEs are encoded a chunk of rows at a time; the statistics do not depend on the chunk."""
    sae = standard_sae(D_MODEL, 12, seed=3)
    finetuned = tiny_model(seed=1)
    whole = evaluate_universality(model, finetuned, sae, tokens, PairedConfig(hook="blocks.2.hook_resid_pre"))
    chunked = evaluate_universality(
        model, finetuned, sae, tokens, PairedConfig(hook="blocks.2.hook_resid_pre", codes_per_chunk=12 * 5)
    )
    torch.testing.assert_close(chunked.density_base, whole.density_base, rtol=0, atol=0)
    torch.testing.assert_close(chunked.activation_similarity, whole.activation_similarity, equal_nan=True)
    torch.testing.assert_close(chunked.dead_activation_error, whole.dead_activation_error)
