"""Latent matching between releases: a permutation is fully matched at cosine 1, killed latents are exactly the dead
ones, and the blockwise mutual nearest neighbours equal a plain full-matrix reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_bench.engine.latent_matching import live_latents, match_latents


def _decoder(d_sae: int, d_model: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(d_sae, d_model, generator=torch.Generator().manual_seed(seed))


def _reference(old: torch.Tensor, new: torch.Tensor, threshold: float) -> list[int]:
    """Mutual nearest neighbours over the full cosine matrix, live rows only."""
    old_alive, new_alive = old.abs().amax(1) > 0, new.abs().amax(1) > 0
    cos = torch.nn.functional.normalize(old, dim=1) @ torch.nn.functional.normalize(new, dim=1).T
    cos[~old_alive] = -math.inf
    cos[:, ~new_alive] = -math.inf
    result = []
    for o in range(old.shape[0]):
        n = int(cos[o].argmax())
        mutual = old_alive[o] and new_alive[n] and int(cos[:, n].argmax()) == o and cos[o, n] >= threshold
        result.append(n if mutual else -1)
    return result


def test_a_permuted_release_is_fully_matched_at_cosine_one():
    old = _decoder(300)
    permutation = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    match = match_latents(old, old[permutation], block=64)
    assert match.matched == 300 and match.born == 0 and match.dead == 0
    assert torch.equal(permutation[match.old_to_new], torch.arange(300))
    assert torch.allclose(match.cosine, torch.ones(300), atol=1e-6)
    assert match.summary()["cosine_median"] == pytest.approx(1.0, abs=1e-6)


def test_killed_latents_are_exactly_the_dead_ones():
    old = _decoder(200)
    killed = torch.tensor([3, 17, 64, 65, 199])
    new = old.clone()
    new[killed] = 0.0  # the decoder rows zeroed (their encoder rows would make them never fire)
    match = match_latents(old, new, block=50)
    lost = (match.old_to_new < 0).nonzero().flatten()
    assert torch.equal(lost, killed) and match.dead == len(killed) and match.born == 0
    assert match.matched == 200 - len(killed)


def test_latents_that_never_fire_are_dead_given_their_densities():
    old = _decoder(40)
    density = torch.ones(40)
    density[[5, 6]] = 0.0
    match = match_latents(old, old.clone(), new_density=density)
    assert (match.old_to_new < 0).nonzero().flatten().tolist() == [5, 6]
    assert live_latents(old, density).sum() == 38


@settings(max_examples=25, deadline=None)
@given(
    d_old=st.integers(1, 90),
    d_new=st.integers(1, 90),
    block=st.integers(1, 40),
    noise=st.floats(0.0, 2.0),
    dead=st.integers(0, 5),
    seed=st.integers(0, 10_000),
)
def test_blockwise_matching_equals_the_full_matrix_reference(d_old, d_new, block, noise, dead, seed):
    old = _decoder(d_old, seed=seed)
    new = torch.cat([old, _decoder(max(0, d_new - d_old), seed=seed + 1)])[:d_new]
    new = new + noise * _decoder(d_new, seed=seed + 2)
    new[: min(dead, d_new)] = 0.0
    match = match_latents(old, new, threshold=0.5, block=block)
    assert match.old_to_new.tolist() == _reference(old, new, 0.5)


def test_decoders_of_another_width_or_a_bad_threshold_are_refused():
    with pytest.raises(ValueError, match="one d_model"):
        match_latents(_decoder(4, 8), _decoder(4, 16))
    with pytest.raises(ValueError, match="threshold"):
        match_latents(_decoder(4), _decoder(4), threshold=0.0)
