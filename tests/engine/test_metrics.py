"""Every metric against a plain numpy / loop reference, and every accumulator against its pure function."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from sae_bench.engine import metrics
from tests.strategies import activation_pairs, logit_pairs, paired_codes, sparse_codes, split_points, split_rows


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.float64)


def centred_sum_of_squares(x: np.ndarray) -> float:
    return float(((x - x.mean(axis=0)) ** 2).sum())


# --- reference values ------------------------------------------------------------------------------------------


@given(sparse_codes())
def test_l0_counts_active_features_per_token(codes):
    expected = sum(sum(1 for v in row if v > 0) for row in codes.tolist()) / codes.shape[0]
    assert metrics.l0(codes) == pytest.approx(expected, rel=1e-12)


@given(activation_pairs())
def test_mse_is_mean_per_token_summed_squared_error(pair):
    x, x_hat = pair
    expected = float(((np64(x) - np64(x_hat)) ** 2).sum(axis=1).mean())
    assert close(metrics.mse(x, x_hat), expected)


@given(activation_pairs(min_tokens=2))
def test_explained_variance_matches_centred_pooled_reference(pair):
    x, x_hat = pair
    sst = centred_sum_of_squares(np64(x))
    assume(sst > 1e-6 * max(1.0, float((np64(x) ** 2).sum())))
    expected = 1 - float(((np64(x) - np64(x_hat)) ** 2).sum()) / sst
    assert close(metrics.explained_variance(x, x_hat), expected)


@given(activation_pairs(min_tokens=1))
def test_explained_variance_flattened_matches_r2_over_all_scalars(pair):
    x, x_hat = pair
    flat, flat_hat = np64(x).ravel(), np64(x_hat).ravel()
    sst = float(((flat - flat.mean()) ** 2).sum())
    assume(sst > 1e-6 * max(1.0, float((flat**2).sum())))
    expected = 1 - float(((flat - flat_hat) ** 2).sum()) / sst
    assert close(metrics.explained_variance_flattened(x, x_hat), expected)


@given(activation_pairs(min_tokens=2))
def test_explained_variance_per_token_matches_loop(pair):
    x, x_hat = pair
    xs, mean = np64(x), np64(x).mean(axis=0)
    denominators = [float(((row - mean) ** 2).sum()) for row in xs]
    assume(min(denominators) > 1e-6)
    rows = zip(xs, np64(x_hat), denominators, strict=True)
    expected = np.mean([1 - float(((r - h) ** 2).sum()) / d for r, h, d in rows])
    assert close(metrics.explained_variance_per_token(x, x_hat), float(expected), rel=1e-7)


@given(logit_pairs())
def test_kl_divergence_matches_reference_and_is_nonnegative(pair):
    clean, other = pair

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(np64(clean)), softmax(np64(other))
    expected = float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())
    got = metrics.kl_divergence(clean, other)
    assert got >= -1e-12
    assert math.isclose(got, expected, rel_tol=1e-7, abs_tol=1e-9)
    assert metrics.kl_divergence(clean, clean) == 0.0


@given(logit_pairs(), st.data())
def test_scoring_from_logits_equals_the_log_softmax_reference(pair, data):
    """The engine's scoring (one softmax per distribution, KL from the logit difference) against numpy float64: to
    1e-12 in float64, and in float32 as close as float32 log-softmax itself gets (no cancellation of the offset)."""
    clean, other = pair
    n, vocab = clean.shape
    targets = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n)))

    def log_softmax(z):
        shifted = z - z.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    log_p, log_q = log_softmax(np64(clean)), log_softmax(np64(other))
    expected_kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    expected_nll = -log_q[np.arange(len(targets)), targets.numpy()]
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        c, o = clean.to(dtype), other.to(dtype)
        p, lse_p = metrics.softmax_and_log_normaliser(c)
        lse_q = metrics.softmax_and_log_normaliser(o)[1]
        np.testing.assert_allclose(p.double().numpy(), np.exp(log_p), rtol=tol, atol=tol)
        nll = metrics.next_token_nll_from_logits(o, lse_q, targets)
        kl = metrics.kl_from_logits(p, lse_p, c, o.clone(), lse_q, overwrite_q=True)
        np.testing.assert_allclose(nll.double().numpy(), expected_nll, rtol=tol, atol=tol)
        np.testing.assert_allclose(kl.double().numpy(), expected_kl, rtol=tol, atol=tol)
        assert torch.equal(kl, metrics.kl_from_logits(p, lse_p, c, o, lse_q))


@given(sparse_codes())
def test_feature_density_counts_firing_tokens(codes):
    expected = [sum(1 for row in codes.tolist() if row[i] > 0) / codes.shape[0] for i in range(codes.shape[1])]
    assert metrics.feature_density(codes).tolist() == pytest.approx(expected, rel=1e-12)
    log = metrics.log_feature_density(codes)
    assert log.tolist() == pytest.approx([math.log10(d + 1e-10) for d in expected], rel=1e-12)


def test_dead_feature_log_density_is_minus_ten():
    codes = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    assert metrics.log_feature_density(codes).tolist() == pytest.approx([-10.0, math.log10(1 + 1e-10)])


@given(paired_codes(min_tokens=2))
@example((torch.zeros(3, 2), torch.ones(3, 2)))
def test_pearson_per_feature_equals_numpy_corrcoef(pair):
    a, b = pair
    got = metrics.pearson_per_feature(a, b)
    for i in range(a.shape[1]):
        col_a, col_b = np64(a[:, i]), np64(b[:, i])
        if col_a.std() == 0 or col_b.std() == 0:
            assert math.isnan(got[i])
        else:
            assert got[i].item() == pytest.approx(np.corrcoef(col_a, col_b)[0, 1], abs=1e-9)


@given(paired_codes())
def test_dead_activation_error_matches_loop(pair):
    a, b = pair
    for i in range(a.shape[1]):
        expected = np.mean(
            [
                abs(math.log10(u + 1e-10) - math.log10(v + 1e-10))
                for u, v in zip(np64(a[:, i]), np64(b[:, i]), strict=True)
            ]
        )
        assert metrics.dead_activation_error(a, b)[i].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(st.integers(1, 9), st.integers(1, 6), st.integers(2, 15), st.integers(1, 4), st.integers(0, 2**16))
def test_logit_similarity_is_pearson_over_vocab(n_features, d, vocab, chunk, seed):
    gen = torch.Generator().manual_seed(seed)
    w_dec, u_b, u_f = (
        torch.randn(n_features, d, generator=gen),
        torch.randn(d, vocab, generator=gen),
        torch.randn(d, vocab, generator=gen),
    )
    got = metrics.logit_similarity(w_dec, u_b, u_f, chunk_size=chunk)
    for i in range(n_features):
        expected = np.corrcoef(np64(w_dec[i] @ u_b), np64(w_dec[i] @ u_f))[0, 1]
        assert got[i].item() == pytest.approx(expected, abs=1e-6)


# --- identities and invariances ---------------------------------------------------------------------------------


@given(activation_pairs(min_tokens=2))
def test_perfect_reconstruction_gives_ev_one_and_mse_zero(pair):
    x, _ = pair
    assume(centred_sum_of_squares(np64(x)) > 0)
    assert metrics.explained_variance(x, x) == 1.0
    assert metrics.mse(x, x) == 0.0


@given(activation_pairs(min_tokens=2), st.floats(0.01, 100))
def test_explained_variance_is_scale_invariant(pair, c):
    x, x_hat = pair
    assume(centred_sum_of_squares(np64(x)) > 1e-3 * max(1.0, float((np64(x) ** 2).sum())))
    scaled = metrics.explained_variance(x.double() * c, x_hat.double() * c)
    assert close(scaled, metrics.explained_variance(x, x_hat), rel=1e-8)


@given(activation_pairs(min_tokens=2), st.randoms(use_true_random=False))
def test_metrics_are_permutation_invariant(pair, rng):
    x, x_hat = pair
    assume(centred_sum_of_squares(np64(x)) > 1e-3 * max(1.0, float((np64(x) ** 2).sum())))
    order = list(range(x.shape[0]))
    rng.shuffle(order)
    assert close(metrics.mse(x[order], x_hat[order]), metrics.mse(x, x_hat))
    assert close(metrics.explained_variance(x[order], x_hat[order]), metrics.explained_variance(x, x_hat))
    assert metrics.l0(x[order].abs()) == metrics.l0(x.abs())


def test_ce_loss_recovered_identity_and_zero():
    assert metrics.ce_loss_recovered(2.0, 2.0, 7.0) == 1.0
    assert metrics.ce_loss_recovered(2.0, 7.0, 7.0) == 0.0
    assert metrics.ce_loss_recovered(2.0, 4.5, 7.0) == pytest.approx(0.5)


@pytest.mark.parametrize("clean, zero", [(3.0, 3.0), (3.0, 3.00005), (11.2, 8.3)])
def test_ce_loss_recovered_raises_when_clean_is_not_below_zero(clean, zero):
    with pytest.raises(ValueError, match="not below the zero-ablation loss"):
        metrics.ce_loss_recovered(clean, 3.1, zero)


def test_undefined_metrics_raise_instead_of_nan():
    constant = torch.ones(4, 3)
    with pytest.raises(metrics.UndefinedMetric, match="rounding"):
        metrics.explained_variance(constant, constant * 0)
    with pytest.raises(metrics.UndefinedMetric, match="batch mean"):
        metrics.explained_variance_per_token(torch.ones(1, 3), torch.zeros(1, 3))
    with pytest.raises(metrics.UndefinedMetric, match="no tokens"):
        metrics.l0(torch.zeros(0, 5))
    with pytest.raises(metrics.UndefinedMetric, match="zero-ablation KL"):
        metrics.kl_score(0.0, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        metrics.mse(torch.zeros(3, 2), torch.zeros(3, 4))


@given(
    offset=st.floats(1.0, 1e4),
    d=st.integers(1, 16),
    n=st.integers(2, 64),
    seed=st.integers(0, 2**16),
)
def test_a_denominator_at_float32_rounding_is_undefined_not_huge(offset, d, n, seed):
    """Activations that are one vector plus float32 rounding noise have no variance to explain: EV (pooled, per
    token, streamed) is undefined, never 1 − SSE/(rounding²) = −1e10. A CE gap or a zero-ablation KL at rounding
    level likewise."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=generator, dtype=torch.float64) * offset
    noise = torch.randn(n, d, generator=generator, dtype=torch.float64) * torch.finfo(torch.float32).eps
    x = (base + noise * base.abs()).float()  # what a float32 forward gives for one vector at every token
    x_hat = x + 0.01 * offset
    for name in ("explained_variance", "explained_variance_per_token"):  # flattened: the dims differ, a variance
        with pytest.raises(metrics.UndefinedMetric, match="rounding"):
            getattr(metrics, name)(x, x_hat)
    stats = metrics.ReconstructionStats()
    stats.update(x, x_hat, torch.zeros(n, 1))
    with pytest.raises(metrics.UndefinedMetric, match="rounding"):
        stats.explained_variance()
    ce = 5.0 + offset / 1e3
    with pytest.raises(metrics.UndefinedMetric, match="not below the zero-ablation loss"):
        metrics.ce_loss_recovered(ce, ce, ce * (1 + metrics.FLOAT32_ROUNDING / 2))
    with pytest.raises(metrics.UndefinedMetric, match="rounding"):
        metrics.kl_score(0.0, metrics.FLOAT32_ROUNDING / 2)


def test_variance_above_the_rounding_level_stays_defined():
    """The rule takes nothing real away: a spread of a thousand rounding units is a variance."""
    x = torch.ones(8, 4) * 100 + torch.arange(8.0)[:, None] * 1e-3
    assert metrics.explained_variance(x, x) == 1.0
    assert metrics.kl_score(0.0, 10 * metrics.FLOAT32_ROUNDING) == 1.0


def test_summaries_drop_undefined_features():
    values = torch.tensor([0.5, math.nan, 1.0, math.nan])
    summary = metrics.summarise_defined(values)
    assert (summary.mean, summary.n_defined, summary.n_undefined) == (0.75, 2, 2)
    assert metrics.summarise_defined(values, torch.tensor([False, True, False, True])).mean is None


# --- streaming equals pure, for any batching ---------------------------------------------------------------------


@given(st.data())
def test_reconstruction_stats_equal_pure_functions_for_any_split(data):
    x, x_hat = data.draw(activation_pairs(min_tokens=2))
    codes = data.draw(sparse_codes(min_tokens=x.shape[0], max_tokens=x.shape[0]))
    cuts = data.draw(split_points(x.shape[0]))
    assume(centred_sum_of_squares(np64(x)) > 1e-6 * max(1.0, float((np64(x) ** 2).sum())))
    stats = metrics.ReconstructionStats()
    for bx, bh, bc in zip(split_rows(x, cuts), split_rows(x_hat, cuts), split_rows(codes, cuts), strict=True):
        stats.update(bx, bh, bc)
    assert close(stats.l0(), metrics.l0(codes))
    assert close(stats.mse(), metrics.mse(x, x_hat))
    assert close(stats.explained_variance(), metrics.explained_variance(x, x_hat))
    flat = np64(x).ravel()
    if float(((flat - flat.mean()) ** 2).sum()) > 1e-6 * max(1.0, float((flat**2).sum())):
        assert close(stats.explained_variance_flattened(), metrics.explained_variance_flattened(x, x_hat))


@given(st.data())
def test_feature_and_pair_stats_equal_pure_functions_for_any_split(data):
    a, b = data.draw(paired_codes(min_tokens=2))
    cuts = data.draw(split_points(a.shape[0]))
    density, pearson, dead = (
        metrics.FeatureDensityStats(a.shape[1]),
        metrics.PearsonStats(a.shape[1]),
        metrics.DeadActivationErrorStats(a.shape[1]),
    )
    for ba, bb in zip(split_rows(a, cuts), split_rows(b, cuts), strict=True):
        density.update(ba)
        pearson.update(ba, bb)
        dead.update(ba, bb)
    torch.testing.assert_close(density.density(), metrics.feature_density(a), rtol=1e-12, atol=0)
    torch.testing.assert_close(dead.compute(), metrics.dead_activation_error(a, b), rtol=1e-9, atol=1e-12)
    expected = metrics.pearson_per_feature(a, b)
    got = pearson.compute()
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    defined = ~torch.isnan(expected)
    torch.testing.assert_close(got[defined], expected[defined], rtol=1e-9, atol=1e-9)


@given(st.data())
def test_token_mean_of_kl_equals_kl_divergence_for_any_split(data):
    clean, other = data.draw(logit_pairs())
    cuts = data.draw(split_points(clean.shape[0]))
    kl = metrics.TokenMean()
    for bc, bo in zip(split_rows(clean, cuts), split_rows(other, cuts), strict=True):
        kl.update(metrics.kl_per_position(bc, bo))
    assert close(kl.compute("kl"), metrics.kl_divergence(clean, other))


def test_ce_loss_recovered_batch_mean_is_mean_of_batch_ratios():
    clean, spliced, zero = metrics.TokenMean(), metrics.TokenMean(), metrics.TokenMean()
    for c, s, z in [([1.0, 3.0], [3.0, 3.0], [5.0, 5.0]), ([2.0], [2.5], [4.0])]:
        clean.update(torch.tensor(c))
        spliced.update(torch.tensor(s))
        zero.update(torch.tensor(z))
    expected = ((5 - 3) / (5 - 2) + (4 - 2.5) / (4 - 2)) / 2
    assert metrics.ce_loss_recovered_batch_mean(clean, spliced, zero) == pytest.approx(expected)
    pooled = metrics.ce_loss_recovered(clean.compute("c"), spliced.compute("s"), zero.compute("z"))
    assert pooled == pytest.approx((14 / 3 - 17 / 6) / (14 / 3 - 2))


@given(st.data())
def test_pooled_per_token_ev_is_the_per_token_ev_of_all_tokens_for_any_split(data):
    x, x_hat = data.draw(activation_pairs(min_tokens=2))
    cuts = data.draw(split_points(x.shape[0]))
    x64 = np64(x)
    distance = ((x64 - x64.mean(axis=0)) ** 2).sum(axis=1)
    assume(distance.min() > 1e-6 * max(1.0, float(distance.max())))
    stats = metrics.PooledPerTokenEVStats()
    for bx, bh in zip(split_rows(x, cuts), split_rows(x_hat, cuts), strict=True):
        stats.update(bx, bh)
    reference = float(np.mean(1 - ((x64 - np64(x_hat)) ** 2).sum(axis=1) / distance))
    assert close(stats.compute(), reference, rel=1e-6)
    assert close(stats.compute(), metrics.explained_variance_per_token(x, x_hat), rel=1e-9)


def test_pooled_per_token_ev_refuses_to_keep_too_much():
    stats = metrics.PooledPerTokenEVStats(max_values=10)
    with pytest.raises(ValueError, match="keeps every token"):
        stats.update(torch.ones(3, 4), torch.ones(3, 4))


def _overflow_case(rule: str, nll: list[float]) -> tuple[metrics.BatchOverflows, metrics.TokenMean, bool]:
    overflows, mean = metrics.BatchOverflows(rule), metrics.TokenMean()
    admitted = overflows.admit("spliced", torch.tensor(nll), None, [mean])
    return overflows, mean, admitted


def test_an_overflowed_batch_makes_its_mean_undefined_by_default():
    overflows, mean, admitted = _overflow_case("undefined", [1.0, math.inf])
    assert not admitted and overflows.batches_overflowed == 1 and overflows.dropped == 0
    with pytest.raises(metrics.UndefinedMetric, match="1 batch"):
        mean.compute("ce_spliced")


def test_kutsyks_rule_drops_a_spliced_batch_whose_loss_is_inf_and_keeps_the_others():
    overflows, mean = metrics.BatchOverflows("drop-inf-batches"), metrics.TokenMean()
    for nll in ([1.0, 3.0], [2.0, math.inf], [2.0, 4.0]):
        if overflows.admit("spliced", torch.tensor(nll), None, [mean]):
            mean.update(torch.tensor(nll))
    assert overflows.dropped == 1 and overflows.batches_overflowed == 0
    assert mean.compute("ce_spliced") == 2.5  # the two finite batches' tokens
    assert mean.batch_means == [2.0, None, 3.0]


@pytest.mark.parametrize("name", ["clean", "zero"])
def test_kutsyks_rule_drops_only_spliced_batches(name):
    overflows, mean = metrics.BatchOverflows("drop-inf-batches"), metrics.TokenMean()
    assert not overflows.admit(name, torch.tensor([math.inf]), None, [mean])
    assert overflows.overflowed == {name: 1}
    with pytest.raises(metrics.UndefinedMetric, match="never a NaN"):
        mean.compute("ce_clean")


def test_kutsyks_rule_never_drops_a_nan():
    overflows, mean, admitted = _overflow_case("drop-inf-batches", [math.inf, math.nan])
    assert not admitted and overflows.dropped == 0 and overflows.overflowed == {"spliced": 1}
    with pytest.raises(metrics.UndefinedMetric, match="overflowed"):
        mean.compute("ce_spliced")


def test_the_batch_mean_recovery_needs_every_batch():
    clean, spliced, zero = metrics.TokenMean(), metrics.TokenMean(), metrics.TokenMean()
    for mean, value in ((clean, 1.0), (spliced, 2.0), (zero, 3.0)):
        mean.update(torch.tensor([value]))
    spliced.leave_out()
    clean.update(torch.tensor([1.0]))
    zero.update(torch.tensor([3.0]))
    with pytest.raises(metrics.UndefinedMetric, match="1 batch"):
        metrics.ce_loss_recovered_batch_mean(clean, spliced, zero)
