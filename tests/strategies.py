"""Hypothesis strategies for synthetic activations, SAE codes and logits (small shapes, finite values)."""

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

FINITE = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False)
NONNEGATIVE = st.floats(0, 50, width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def activation_pairs(draw, max_tokens: int = 48, max_d: int = 12, min_tokens: int = 1):
    """(x, x_hat): two float32 (N, d) tensors."""
    n = draw(st.integers(min_tokens, max_tokens))
    d = draw(st.integers(1, max_d))
    x = draw(arrays(np.float32, (n, d), elements=FINITE))
    x_hat = draw(arrays(np.float32, (n, d), elements=FINITE))
    return torch.from_numpy(x), torch.from_numpy(x_hat)


@st.composite
def sparse_codes(draw, max_tokens: int = 48, max_features: int = 24, min_tokens: int = 1):
    """A float32 (N, F) ReLU-like code: non-negative, with many exact zeros."""
    n = draw(st.integers(min_tokens, max_tokens))
    f = draw(st.integers(1, max_features))
    values = st.one_of(st.just(0.0), NONNEGATIVE)
    return torch.from_numpy(draw(arrays(np.float32, (n, f), elements=values)))


@st.composite
def paired_codes(draw, max_tokens: int = 48, max_features: int = 16, min_tokens: int = 1):
    """(a, b): two non-negative (N, F) codes of the same shape."""
    a = draw(sparse_codes(max_tokens=max_tokens, max_features=max_features, min_tokens=min_tokens))
    values = st.one_of(st.just(0.0), NONNEGATIVE)
    b = torch.from_numpy(draw(arrays(np.float32, tuple(a.shape), elements=values)))
    return a, b


@st.composite
def logit_pairs(draw, max_positions: int = 24, max_vocab: int = 20):
    """(clean, other): two float32 (N, V) logit tensors within ±30, so softmax cannot overflow."""
    n = draw(st.integers(1, max_positions))
    v = draw(st.integers(2, max_vocab))
    elements = st.floats(-30, 30, width=32, allow_nan=False, allow_subnormal=False)
    return (
        torch.from_numpy(draw(arrays(np.float32, (n, v), elements=elements))),
        torch.from_numpy(draw(arrays(np.float32, (n, v), elements=elements))),
    )


@st.composite
def split_points(draw, n: int):
    """Sorted cut points that split n rows into contiguous batches (possibly just one)."""
    if n < 2:
        return []
    return sorted(draw(st.lists(st.integers(1, n - 1), unique=True, max_size=min(6, n - 1))))


def split_rows(t: torch.Tensor, cuts: list[int]) -> list[torch.Tensor]:
    bounds = [0, *cuts, t.shape[0]]
    return [t[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
