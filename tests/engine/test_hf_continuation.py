"""Continuing an HF model from a residual hook (`sae_bench.engine.hf_continuation`, what a TransformerBridge backend
needs): from every hook of each architecture the suite uses, the continuation equals a full forward with the residual
replaced, bit for bit, with sliding windows shorter than the rows; the residual it runs to is the bridge's, and its
log-probabilities are HookedTransformer's to float32 rounding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from sae_bench.engine.hf_continuation import (
    CONTINUED_ARCHITECTURES,
    continuation_problem,
    continue_from_hook,
    run_to_hook,
)
from sae_bench.engine.metrics import FLOAT32_ROUNDING
from sae_bench.sources.rehearsal.miniatures import miniature

ROWS, POSITIONS, WINDOW = 3, 40, 16
ONE_REPO_PER_ARCHITECTURE = {
    "MistralForCausalLM": "mistralai/Mistral-7B-v0.1",
    "Qwen2ForCausalLM": "Qwen/Qwen1.5-0.5B",
    "GemmaForCausalLM": "google/gemma-2b",
    "Gemma2ForCausalLM": "google/gemma-2-2b",
    "Gemma3ForCausalLM": "google/gemma-3-270m",
    "LlamaForCausalLM": "meta-llama/Llama-3.1-8B",
}


def _miniature_model(architecture: str):
    """The rehearsal's miniature of the architecture (real depth, attention pattern and soft-capping), random
    weights, its sliding window (where it has one) shorter than the rows."""
    config = miniature(ONE_REPO_PER_ARCHITECTURE[architecture]).hf_config()
    if getattr(config, "sliding_window", None) and architecture != "Gemma3ForCausalLM":  # Gemma 3's is 24 already
        config.sliding_window = WINDOW
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _full_forward_with(model, tokens, blocks_before, residual):
    return continue_from_hook(model, tokens, blocks_before, residual, full_forward=True)


def _perturbed(x: torch.Tensor, seed: int) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x + 0.3 * noise * x.norm(dim=-1, keepdim=True) / x.shape[-1] ** 0.5


def test_the_suites_architectures_are_the_continued_ones():
    assert set(ONE_REPO_PER_ARCHITECTURE) == set(CONTINUED_ARCHITECTURES)


@pytest.mark.parametrize("architecture", CONTINUED_ARCHITECTURES)
def test_continuing_from_every_hook_equals_a_full_forward_with_the_residual_replaced(architecture):
    model = _miniature_model(architecture)
    assert continuation_problem(model) is None
    tokens = torch.randint(3, model.config.vocab_size, (ROWS, POSITIONS), generator=torch.Generator().manual_seed(1))
    n_layers = model.config.num_hidden_layers
    with torch.inference_mode():
        clean = model(tokens, use_cache=False).logits
        for blocks_before in range(n_layers + 1):
            x = run_to_hook(model, tokens, blocks_before)
            assert torch.equal(continue_from_hook(model, tokens, blocks_before, x), clean), blocks_before
            replaced = _perturbed(x, blocks_before)
            continued = continue_from_hook(model, tokens, blocks_before, replaced)
            assert torch.equal(continued, _full_forward_with(model, tokens, blocks_before, replaced)), blocks_before
            assert not torch.equal(continued, clean)  # the replaced residual is what ran on


def test_stacked_variants_continue_as_stacked_rows():
    """Clean and spliced rows stacked in one call, as the engine stacks them."""
    model = _miniature_model("Gemma3ForCausalLM")
    tokens = torch.randint(3, model.config.vocab_size, (ROWS, POSITIONS), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        x = run_to_hook(model, tokens, 7)
        stacked = continue_from_hook(model, tokens.repeat(2, 1), 7, torch.cat([x, _perturbed(x, 0)]))
        alone = continue_from_hook(model, tokens, 7, _perturbed(x, 0))
    scale = alone.abs().amax(dim=-1, keepdim=True) + 1
    assert bool(((stacked[ROWS:] - alone).abs() <= FLOAT32_ROUNDING * scale).all())


def test_a_residual_of_another_shape_and_an_unproven_architecture_are_said():
    model = _miniature_model("LlamaForCausalLM")
    tokens = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"residual of shape \(2, 7, 64\) cannot continue tokens of shape \(2, 8\)"):
        continue_from_hook(model, tokens, 1, torch.zeros(2, 7, 64))
    with pytest.raises(ValueError, match="after 33 blocks: the model has 32"):
        run_to_hook(model, tokens, 33)

    class Phi3ForCausalLM(torch.nn.Module):
        pass

    assert "full forward with the residual replaced" in continuation_problem(Phi3ForCausalLM())
    with pytest.raises(ValueError, match="has no model.layers and model.norm: the bridge backend cannot cut it"):
        run_to_hook(Phi3ForCausalLM(), tokens, 1)


@pytest.mark.parametrize("name", ["tiny-mistral/base", "tiny-qwen2/chat", "tiny-gemma/it"])
def test_on_the_zoo_the_residual_is_the_bridges_and_the_log_probs_hooked_transformers(name):
    """The bridge's own hooks and run_with_hooks agree with the continuation on the model it wraps; HookedTransformer
    (folded norms, centred unembedding) agrees in log-probabilities to float32 rounding of each position's
    log-normaliser."""
    from transformer_lens.model_bridge import TransformerBridge

    from sae_bench.sources.loading import load_model, load_zoo_tokenizer
    from sae_bench.sources.zoo.artifacts import verified_directory

    bridge = TransformerBridge.boot_transformers(
        str(verified_directory(f"models/{name}")), device="cpu", tokenizer=load_zoo_tokenizer()
    )
    hooked = load_model(f"zoo:{name}", backend="hooked")
    model = bridge.original_model
    hook, blocks_before = "blocks.2.hook_resid_pre", 2
    tokens = torch.randint(3, bridge.cfg.d_vocab, (ROWS, POSITIONS), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        x = run_to_hook(model, tokens, blocks_before)
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n == hook)
        assert torch.equal(cache[hook], x)
        replaced = _perturbed(x, 0)
        continued = continue_from_hook(model, tokens, blocks_before, replaced)
        by_bridge = bridge.run_with_hooks(tokens, fwd_hooks=[(hook, lambda t, hook: replaced)])
        assert torch.equal(continued, by_bridge)
        by_hooked = hooked(replaced, start_at_layer=blocks_before, tokens=tokens)
    ours, theirs = torch.log_softmax(continued.double(), -1), torch.log_softmax(by_hooked.double(), -1)
    bound = FLOAT32_ROUNDING * (ours.abs().amax(dim=-1, keepdim=True) + 1)
    assert bool(((ours - theirs).abs() <= bound).all()), (ours - theirs).abs().max().item()
