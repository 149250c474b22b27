"""A tiny HF Mistral checkpoint and its "fine-tune" (every weight moved by 5 % of its spread), saved as HF
`save_pretrained` directories: what weight drift is defined on."""

from pathlib import Path

import torch
from transformers import MistralConfig, MistralForCausalLM

from sae_bench.sources.loading import load_zoo_tokenizer

TINY_HF = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
"""A two-layer decoder's HF config fields, shared by the tiny checkpoints of the tests (any of the zoo's
architectures takes them)."""


def hf_pair(folder: Path) -> tuple[Path, Path]:
    """(base, fine-tune) directories under `folder`; the same weights for the same call."""
    torch.manual_seed(0)
    base = MistralForCausalLM(MistralConfig(**TINY_HF)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in base.parameters():  # off the init values (norms at 1), so no tensor is a constant
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    base.save_pretrained(folder / "base")
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
    base.save_pretrained(folder / "finetuned")
    for name in ("base", "finetuned"):  # load_model reads a directory's tokenizer beside its weights
        load_zoo_tokenizer().save_pretrained(folder / name)
    return folder / "base", folder / "finetuned"
