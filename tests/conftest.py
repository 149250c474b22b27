"""Shared fixtures: a tiny Mistral-shaped HookedTransformer, tokens it predicts well, and hand-built SAEs."""

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bench.engine.backends import backend_of, hooked_transformer_on_purpose

D_MODEL = 16
D_VOCAB = 61
N_LAYERS = 4


def tiny_model(seed: int = 0, **overrides) -> HookedTransformer:
    """A random 4-layer RMSNorm / rotary / gated-MLP model (Mistral's block shape, no biases), in eval mode."""
    settings = dict(
        n_layers=N_LAYERS,
        d_model=D_MODEL,
        n_ctx=24,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=D_VOCAB,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        seed=seed,
    )
    settings.update(overrides)
    with hooked_transformer_on_purpose():
        model = HookedTransformer(HookedTransformerConfig(**settings))
    with torch.no_grad():
        model.W_U.mul_(8.0)  # sharpen the predictions so sampled text has a clean loss well below ln(vocab)
    return model.eval()


@torch.no_grad()
def sample_tokens(model: HookedTransformer, n_sequences: int, length: int, seed: int) -> torch.Tensor:
    """Text sampled from the model itself, so its clean loss sits well below the zero-ablation ln(vocab)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab, (n_sequences, 1), generator=gen)
    for _ in range(length - 1):
        probs = torch.softmax(model(tokens)[:, -1].double(), dim=-1)
        tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen)], dim=1)
    return tokens


def standard_sae(d_in: int, d_sae: int, seed: int = 0) -> StandardSAE:
    torch.manual_seed(seed)
    return StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)).eval()


def identity_sae(d_in: int) -> StandardSAE:
    """ReLU(x) − ReLU(−x) = x exactly: W_enc = [I, −I], W_dec = [I; −I], zero biases."""
    sae = standard_sae(d_in, 2 * d_in)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(d_in: int, d_sae: int = 8) -> StandardSAE:
    """Encodes like any SAE but decodes everything to exactly zero."""
    sae = standard_sae(d_in, d_sae)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="session")
def model() -> HookedTransformer:
    return tiny_model()


@pytest.fixture(scope="session")
def tokens(model) -> torch.Tensor:
    return sample_tokens(model, n_sequences=10, length=16, seed=1)


@pytest.fixture(scope="session")
def random_sae() -> StandardSAE:
    return standard_sae(D_MODEL, 48, seed=3)


@pytest.fixture(scope="session", autouse=True)
def results_database_outside_the_repo(tmp_path_factory):
    """Runs these tests start (gate, rehearsal, report) record into a temporary results database, not the repo's."""
    import os

    os.environ["SAE_BENCH_RESULTS"] = str(tmp_path_factory.mktemp("results") / "results.sqlite")


def rows_per_layer(model) -> list[int]:
    """Rows each block of `model` runs from now on, counted by its backend: a list that fills as the model runs."""
    backend = backend_of(model)
    rows = [0] * backend.n_layers

    def count(layer: int, n: int) -> None:
        rows[layer] += n

    backend.count_block_rows(count)
    return rows
