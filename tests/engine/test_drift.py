"""Residual similarity and weight drift against plain references."""

import math

import pandas as pd
import pytest
import torch

from sae_bench.engine.drift import ResidualSimilarityStats, drift_between, weight_drift
from sae_bench.sources.loading import BACKENDS, load_model
from tests.conftest import tiny_model
from tests.engine.hf_pair import hf_pair


def weights(model):
    """(name, layer, tensor) of a config-built model's parameters, labelled by block, for the drift arithmetic."""
    for name, weight in model.named_parameters():
        layer = f"block {int(name.split('.')[1]):03d}" if name.startswith("blocks.") else name.split(".")[0]
        yield name, layer, weight


def test_residual_similarity_matches_per_token_reference():
    gen = torch.Generator().manual_seed(0)
    xb, xf = torch.randn(5, 7, 3, generator=gen), torch.randn(5, 7, 3, generator=gen)
    considered = torch.rand(5, 7, generator=gen) > 0.3
    stats = ResidualSimilarityStats(n_positions=7)
    stats.update(xb[:2], xf[:2], considered[:2])
    stats.update(xb[2:], xf[2:], considered[2:])
    result = stats.compute()
    cos = torch.nn.functional.cosine_similarity(xb.double(), xf.double(), dim=-1)
    dist = (xb.double() - xf.double()).norm(dim=-1)
    assert result.mean_cosine == pytest.approx(float(cos[considered].mean()), rel=1e-12)
    assert result.mean_distance == pytest.approx(float(dist[considered].mean()), rel=1e-12)
    assert result.n_tokens == int(considered.sum())
    for row in result.per_position.itertuples():
        column = considered[:, row.position]
        assert row.mean_distance == pytest.approx(float(dist[:, row.position][column].mean()), rel=1e-12)


def test_zero_residuals_are_left_out_of_the_cosine_not_averaged_as_nan():
    xb = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    xf = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    result = ResidualSimilarityStats(2)
    result.update(xb, xf, torch.ones(1, 2, dtype=torch.bool))
    out = result.compute()
    assert out.mean_cosine == 1.0 and out.n_zero_norm == 1
    assert out.mean_distance == pytest.approx(1.0)


def test_weight_drift_of_a_model_against_itself_is_zero_and_scales_linearly():
    base, same = tiny_model(seed=0), tiny_model(seed=0)
    assert drift_between(weights(base), weights(same)).overall == 0.0
    scaled = tiny_model(seed=0)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(1.1)
    drift = drift_between(weights(base), weights(scaled))
    assert drift.overall == pytest.approx(0.1, rel=1e-6)
    assert drift.per_layer.relative.tolist() == pytest.approx([0.1] * len(drift.per_layer), rel=1e-6)
    assert {"block 000", "block 003", "embed", "unembed"} <= set(drift.per_layer.layer)


def test_weight_drift_per_layer_pools_the_layer_tensors():
    base, finetuned = tiny_model(seed=0), tiny_model(seed=0)
    with torch.no_grad():
        finetuned.blocks[1].attn.W_Q.add_(1.0)
    drift = drift_between(weights(base), weights(finetuned))
    block = drift.per_tensor[drift.per_tensor.layer == "block 001"]
    expected = math.sqrt((block.norm_diff**2).sum()) / math.sqrt((block.norm_base**2).sum())
    assert drift.per_layer.set_index("layer").loc["block 001", "relative"] == pytest.approx(expected)
    assert drift.per_layer.set_index("layer").loc["block 000", "relative"] == 0.0


def test_weight_drift_rejects_different_architectures():
    with pytest.raises(ValueError, match="different parameters|shape"):
        drift_between(weights(tiny_model()), weights(tiny_model(n_layers=2)))


def test_weight_drift_is_the_same_on_both_backends(tmp_path):
    """Definition 2: drift reads the HF checkpoints' raw weights, so the hooked backend (whose own weights are
    processed: folded norms, centred unembedding) and the bridge give the same number, to the last bit."""
    base, finetuned = hf_pair(tmp_path)
    drifts = {
        backend: weight_drift(load_model(str(base), backend=backend), load_model(str(finetuned), backend=backend))
        for backend in BACKENDS
    }
    assert drifts["hooked"].overall == drifts["bridge"].overall > 0
    pd.testing.assert_frame_equal(drifts["hooked"].per_tensor, drifts["bridge"].per_tensor)
    assert {"block 000", "block 001", "embed_tokens", "lm_head"} <= set(drifts["bridge"].per_layer.layer)


def test_weight_drift_of_a_model_built_without_a_checkpoint_says_why():
    with pytest.raises(ValueError, match="not loaded from an HF checkpoint"):
        weight_drift(tiny_model(), tiny_model())
