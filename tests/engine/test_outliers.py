"""Scaling factor, outlier masks and the outlier breakdown."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sae_bench.engine.outliers import (
    MeanNormStats,
    OutlierBreakdownStats,
    OutlierPolicy,
    outlier_mask,
    scaling_factor,
)
from tests.strategies import activation_pairs, split_points, split_rows


@given(activation_pairs(), st.data())
def test_scaling_factor_gives_mean_norm_sqrt_d(pair, data):
    x, _ = pair
    norms = x.double().norm(dim=-1)
    assume(float(norms.mean()) > 0)
    stats = MeanNormStats()
    for part in split_rows(x, data.draw(split_points(x.shape[0]))):
        stats.update(part)
    factor = stats.scaling_factor(x.shape[1])
    assert factor == pytest.approx(scaling_factor(float(norms.mean()), x.shape[1]), rel=1e-9)
    assert float((x.double() * factor).norm(dim=-1).mean()) == pytest.approx(math.sqrt(x.shape[1]), rel=1e-9)


@given(activation_pairs(), st.floats(0.01, 1e3), st.floats(0.01, 1e3), st.sampled_from(["scaled", "raw"]))
def test_outlier_mask_is_monotone_in_the_threshold(pair, t1, t2, norm):
    x, _ = pair
    low, high = sorted((t1, t2))
    loose = outlier_mask(x, OutlierPolicy(low, norm), scale=0.5)
    strict = outlier_mask(x, OutlierPolicy(high, norm), scale=0.5)
    assert bool((strict <= loose).all())  # every outlier at the higher threshold is one at the lower


def test_scaled_and_raw_thresholds_differ_by_the_factor():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # norms 5 and 0.5
    assert outlier_mask(x, OutlierPolicy(1.0, "raw"), scale=None).tolist() == [True, False]
    assert outlier_mask(x, OutlierPolicy(1.0, "scaled"), scale=10.0).tolist() == [True, True]
    with pytest.raises(ValueError, match="needs a scaling factor"):
        outlier_mask(x, OutlierPolicy(1.0, "scaled"), scale=None)


def test_policy_validates_its_fields():
    with pytest.raises(ValueError, match="threshold"):
        OutlierPolicy(threshold=-1)
    with pytest.raises(ValueError, match="norm"):
        OutlierPolicy(threshold=1, norm="log")  # type: ignore[arg-type]


@given(arrays(np.bool_, (3, 14)), arrays(np.int64, (3, 14), elements=st.integers(0, 5)))
def test_breakdown_counts_each_outlier_once_in_priority_order(outlier, tokens):
    outlier_t, tokens_t = torch.from_numpy(outlier), torch.from_numpy(tokens)
    considered = torch.ones_like(outlier_t)
    stats = OutlierBreakdownStats(bos_token_id=0, newline_token_ids=torch.tensor([1]))
    stats.update(outlier_t, tokens_t, considered)
    b = stats.compute()
    expected = {"bos": 0, "early": 0, "newline": 0, "other": 0}
    for s in range(3):
        for p in range(14):
            if not outlier[s, p]:
                continue
            kind = "bos" if tokens[s, p] == 0 else "early" if p < 10 else "newline" if tokens[s, p] == 1 else "other"
            expected[kind] += 1
    assert (b.n_bos, b.n_early_position, b.n_newline, b.n_other) == tuple(expected.values())
    assert b.n_outliers == int(outlier.sum()) and b.n_positions == 42
    assert b.fraction == pytest.approx(outlier.sum() / 42)


class _ByteTokenizer:
    """A stand-in tokenizer: id i decodes to chr(i)."""

    def __init__(self) -> None:
        self.decoded = 0

    def __len__(self) -> int:
        return 128

    def batch_decode(self, ids):
        self.decoded += 1
        return [chr(row[0]) for row in ids]


def test_newline_ids_are_found_once_per_tokenizer():
    from sae_bench.engine.outliers import newline_token_ids

    tokenizer = _ByteTokenizer()
    assert newline_token_ids(tokenizer).tolist() == [10]
    assert newline_token_ids(tokenizer).tolist() == [10]
    assert tokenizer.decoded == 1
