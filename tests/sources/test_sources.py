"""Local HF directories load into TransformerLens through the library's own converters, matching HF."""

import pytest
import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from sae_bench.sources.loading import load_hf_directory
from tests.engine.hf_pair import TINY_HF as TINY

ARCHITECTURES = {
    "mistral": (MistralConfig, MistralForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "gemma": (GemmaConfig, GemmaForCausalLM, {"head_dim": 8}),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_local_directory_matches_hf_log_probs(name, tmp_path):
    config_class, model_class, extra = ARCHITECTURES[name]
    torch.manual_seed(0)
    hf = model_class(config_class(**TINY, **extra)).eval()
    with torch.no_grad():
        for p in hf.parameters():  # move every weight off its init value (norms at 1, biases at 0)
            p.add_(0.02 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    model = load_hf_directory(tmp_path)
    tokens = torch.randint(0, TINY["vocab_size"], (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.log_softmax(hf(tokens).logits, dim=-1)
        got = torch.log_softmax(model(tokens), dim=-1)
    # centre_unembed shifts the logits per position; log-probabilities are what must agree
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert model.cfg.original_architecture == hf.config.architectures[0]


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_directory(tmp_path)


def test_an_unsupported_architecture_names_the_supported_ones():
    from transformers import LlamaConfig

    from sae_bench.sources.loading import hooked_config_from_hf

    config = LlamaConfig(**TINY, architectures=["LlamaForCausalLM"])
    with pytest.raises(ValueError, match="'LlamaForCausalLM' is not supported.*MistralForCausalLM"):
        hooked_config_from_hf(config)
