"""Feature breaks: born, died and shifted features and the largest moves, against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_bench.engine.feature_breaks import SHIFT, FeatureBreaks

densities = st.lists(st.sampled_from([0.0, 1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 0.01, 0.5]), min_size=1, max_size=40)


@settings(max_examples=50, deadline=None)
@given(own=densities, other=densities)
def test_counts_and_top_match_a_plain_loop(own, other):
    n = min(len(own), len(other))
    own, other = own[:n], other[:n]
    breaks = FeatureBreaks(torch.tensor(own, dtype=torch.float64), torch.tensor(other, dtype=torch.float64))
    ratio = [math.log10(b + 1e-10) - math.log10(a + 1e-10) for a, b in zip(own, other, strict=True)]
    assert breaks.counts() == {
        "features": n,
        "born": sum(a == 0 < b for a, b in zip(own, other, strict=True)),
        "died": sum(b == 0 < a for a, b in zip(own, other, strict=True)),
        "shifted": sum(
            a > 0 and b > 0 and abs(r) >= math.log10(SHIFT) - 1e-9 for a, b, r in zip(own, other, ratio, strict=True)
        ),
        "dead_on_both": sum(a == 0 == b for a, b in zip(own, other, strict=True)),
    }
    top = breaks.top(3)
    expected = sorted(range(n), key=lambda i: (-abs(ratio[i]), i))[:3]
    assert [row["feature"] for row in top] == expected
    for row in top:
        assert row["log10_ratio"] == pytest.approx(ratio[row["feature"]])


def test_densities_of_two_widths_are_refused():
    with pytest.raises(ValueError, match=r"\(d_sae,\) each"):
        FeatureBreaks(torch.zeros(4), torch.zeros(5))
