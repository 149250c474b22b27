"""Feature statistics: latent scaling and the streaming top-k against plain loops on synthetic data, and in the
engine against the SAE run on every reconstructed position at once."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_bench.engine.evaluate import EvalConfig, evaluate_transfer
from sae_bench.engine.feature_stats import MIN_FIRINGS, FeatureShift, FeatureStats, FeatureSummary, context
from tests.conftest import D_MODEL, standard_sae, tiny_model

HOOK = "blocks.2.hook_resid_pre"


FLOAT32_UNIT = 2.0**-24
"""float32's unit roundoff: a float32 sum of m products errs by at most m·u times the sum of their magnitudes."""


def plain_beta(x: torch.Tensor, f: torch.Tensor, decoder: torch.Tensor) -> list[tuple[float, float]]:
    """β_j = Σ_t f_j(t)·⟨x_t, d_j⟩ / (‖d_j‖²·Σ_t f_j(t)²), one feature and one token at a time, float64; with the
    most the engine's float32 sums may err by (Higham's bound): Σ_t f_j(t)·x_t is a float32 product over the n tokens,
    so (n + d)·u of Σ_t Σ_k |f_j(t)·x_tk·d_jk| over the denominator, and Σ_t f_j(t)² a float32 sum of n positive
    terms, so n·u of β."""
    n, d_model = x.shape
    betas = []
    for j in range(f.shape[1]):
        d = decoder[j].double()
        terms = [float(f[t, j]) * float(x[t].double() @ d) for t in range(n)]
        magnitude = math.fsum(abs(float(f[t, j])) * float(x[t].double().abs() @ d.abs()) for t in range(n))
        denominator = float(d @ d) * math.fsum(float(f[t, j]) ** 2 for t in range(n))
        if denominator > 0:
            beta = math.fsum(terms) / denominator
            error = FLOAT32_UNIT * ((n + d_model) * magnitude / denominator + (n + 1) * abs(beta))
            betas.append((beta, error))
        else:
            betas.append((math.nan, 0.0))
    return betas


def assert_beta(got: torch.Tensor, expected: list[tuple[float, float]]) -> None:
    for value, (beta, error) in zip(got.tolist(), expected, strict=True):
        assert math.isnan(value) if math.isnan(beta) else abs(value - beta) <= error + 1e-12, (value, beta, error)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 50), cuts=st.lists(st.integers(0, 50), max_size=4), k=st.integers(1, 6), seed=st.integers(0, 9999)
)
def test_streamed_stats_match_a_plain_loop_however_the_tokens_are_batched(n, cuts, k, seed):
    g = torch.Generator().manual_seed(seed)
    d, d_sae = 5, 7
    x = torch.randn(n, d, generator=g)
    f = torch.relu(torch.randn(n, d_sae, generator=g) - 0.5)  # sparse, continuous: no ties among firing values
    f[:, 0] = 0  # a feature that never fires
    decoder = torch.randn(d_sae, d, generator=g)
    where = torch.stack([torch.arange(n) // 4, torch.arange(n) % 4], dim=1)
    stats = FeatureStats(decoder, k=k)
    bounds = [0, *sorted(c for c in cuts if c < n), n]
    for start, stop in zip(bounds, bounds[1:], strict=False):
        stats.update(x[start:stop], f[start:stop], where[start:stop])
    summary = stats.compute((f > 0).sum(0))
    assert_beta(summary.beta, plain_beta(x, f, decoder))
    assert math.isnan(summary.beta[0])
    for j in range(d_sae):
        firing = sorted(((float(f[t, j]), t) for t in range(n) if f[t, j] > 0), reverse=True)[:k]
        expected = [(value, int(where[t, 0]), int(where[t, 1])) for value, t in firing]
        assert summary.top(j) == [(pytest.approx(v), s, p) for v, s, p in expected]
        assert (summary.top_sequence[j, len(firing) :] == -1).all()


def test_a_feature_whose_direction_is_the_activation_scaled_has_that_scale():
    """x_t = 3·f(t)·d exactly: β = 3 on this model; on a model where the direction is half as strong, ν = 0.5."""
    g = torch.Generator().manual_seed(0)
    decoder = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=-1)
    f = torch.rand(20, 2, generator=g) + 0.1
    own, other = FeatureStats(decoder), FeatureStats(decoder)
    where = torch.zeros(20, 2, dtype=torch.long)
    own.update(3 * f[:, :1] * decoder[0], f, where)
    other.update(1.5 * f[:, :1] * decoder[0], f, where)
    fired = torch.full((2,), 20)
    shift = FeatureShift(own.compute(fired), other.compute(fired))
    assert float(shift.own.beta[0]) == pytest.approx(3.0) and float(shift.ratio[0]) == pytest.approx(0.5)


def test_the_features_whose_scaling_moved_most_come_first_and_undefined_ones_never():
    def summary(beta: list[float]) -> FeatureSummary:
        empty = torch.zeros(1, len(beta))
        fired = torch.full((len(beta),), MIN_FIRINGS)
        fired[6] = MIN_FIRINGS - 1
        return FeatureSummary(torch.tensor(beta, dtype=torch.float64), fired, empty, empty.long(), empty.long())

    own, other = summary([1.0, 2.0, 1.0, math.nan, 0.0, 1.0, 1.0]), summary([1.1, 0.02, -30.0, 1.0, 1.0, 5.0, 1e4])
    shift = FeatureShift(own, other)
    ranked = [row["feature"] for row in shift.top(10)]
    # |log10 |ν||: 2, 1.48, 0.70, 0.04; left out: 3 (β own undefined), 4 (β own 0), 6 (too few firings)
    assert ranked == [1, 2, 5, 0]
    assert shift.median() == (4, pytest.approx(0.01))  # of ν = 1.1, 0.01, −30, 5: the lower middle (torch.median)
    assert shift.top(10)[1]["nu"] == pytest.approx(-30.0)


def test_a_context_marks_the_token_and_elides_the_rest():
    tokens = torch.arange(30).reshape(2, 15)
    assert context(tokens, 1, 12, None) == "…17 18 19 20 21 22 23 24 25 26⟦27⟧28 29"
    words = {i: f"w{i} " for i in range(30)} | {3: "\n"}
    assert context(tokens, 0, 2, lambda ids: "".join(words[i] for i in ids)) == "w0 w1 ⟦w2 ⟧⏎w4 w5 …"


@pytest.fixture(scope="module")
def evaluated(tokens):
    model, sae = tiny_model(), standard_sae(D_MODEL, 48, seed=3)
    config = EvalConfig(hook=HOOK, batch_size=3, progress=False, feature_stats=True)
    return model, sae, evaluate_transfer(model, sae, tokens, config)


def test_the_pass_gives_what_the_sae_gives_on_every_position_at_once(evaluated, tokens):
    model, sae, report = evaluated
    x = model.run_with_cache(tokens, names_filter=HOOK)[1][HOOK]
    with torch.no_grad():
        f = sae.encode(x.reshape(-1, D_MODEL))
    summary = report.features
    assert_beta(summary.beta, plain_beta(x.reshape(-1, D_MODEL), f, sae.W_dec.detach()))
    fired = (f > 0).any(0)
    assert (torch.isfinite(summary.beta) == fired).all() and summary.fired.tolist() == (f > 0).sum(0).tolist()
    for j in range(0, 48, 5):
        for value, seq, pos in summary.top(j):
            assert value == pytest.approx(float(f.reshape(*x.shape[:2], -1)[seq, pos, j]), rel=1e-5)
        assert [v for v, _, _ in summary.top(j)] == pytest.approx(
            f[:, j].sort(descending=True).values[: len(summary.top(j))].tolist(), rel=1e-5
        )


def test_without_the_option_the_report_has_no_features_and_the_same_numbers(evaluated, tokens):
    model, sae, report = evaluated
    plain = evaluate_transfer(model, sae, tokens, EvalConfig(hook=HOOK, batch_size=3, progress=False))
    assert plain.features is None and plain.to_row() == report.to_row()
