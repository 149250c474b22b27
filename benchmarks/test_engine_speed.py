"""Speed of the one-pass engine against SAELens's evals on the same tokens, and agreement of their numbers.

SAELens runs the full model three times for CE (clean, spliced, ablated) and once more to the hook for
L0/EV; the engine runs the prefix once and the suffix three times. With the hook at layer l of L the engine's
floor is 1 + 2·(L − l)/L full passes against 4 − (L − l)/L. Read the ratio off the benchmark table ("engine" group).
"""

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.evals import get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_bench.evaluate import EvalConfig, evaluate_transfer
from tests.saelens_reference import saelens_sparsity_and_variance

N_LAYERS, LAYER = 6, 3
HOOK = f"blocks.{LAYER}.hook_resid_pre"


@pytest.fixture(scope="module")
def setup(device):
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS,
        d_model=128,
        n_ctx=128,
        d_head=32,
        n_heads=4,
        d_mlp=512,
        d_vocab=4096,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        seed=0,
        device=device,
    )
    model = HookedTransformer(cfg).eval()
    sae = StandardSAE(StandardSAEConfig(d_in=128, d_sae=1024, device=device)).eval()
    sae.cfg.metadata.hook_name = HOOK
    tokens = torch.randint(0, 4096, (16, 128), generator=torch.Generator().manual_seed(1))
    return model, sae, tokens


def run_engine(model, sae, tokens):
    report = evaluate_transfer(model, sae, tokens, EvalConfig(hook=HOOK, batch_size=8, progress=False))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return report


def run_saelens(model, sae, tokens):
    scaler, ce = ActivationScaler(), []
    for batch in tokens.split(8):
        ce.append(
            get_recons_loss(sae, model, scaler, batch.to(model.cfg.device), compute_kl=True, compute_ce_loss=True)
        )
    sparsity, _ = saelens_sparsity_and_variance(model, sae, tokens)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return ce, sparsity


def record_throughput(benchmark, tokens):
    """tokens/s into the saved JSON; nothing when timing is off (--benchmark-disable)."""
    if benchmark.stats is not None:
        benchmark.extra_info["tokens_per_s"] = tokens.numel() / benchmark.stats.stats.mean


@pytest.mark.benchmark(group="engine")
def test_one_pass_engine(benchmark, setup):
    model, sae, tokens = setup
    report = benchmark.pedantic(run_engine, args=(model, sae, tokens), rounds=3, warmup_rounds=1, iterations=1)
    record_throughput(benchmark, tokens)
    ce, sparsity = run_saelens(model, sae, tokens)
    assert report.ce_clean == pytest.approx(torch.cat([c["ce_loss_without_sae"] for c in ce]).mean().item(), abs=1e-5)
    assert report.ce_spliced == pytest.approx(torch.cat([c["ce_loss_with_sae"] for c in ce]).mean().item(), abs=1e-5)
    assert report.l0 == pytest.approx(sparsity["l0"], abs=1e-4)
    assert report.explained_variance == pytest.approx(sparsity["explained_variance"], abs=1e-5)


@pytest.mark.benchmark(group="engine")
def test_saelens_evals_same_tokens(benchmark, setup):
    model, sae, tokens = setup
    ce, _ = benchmark.pedantic(run_saelens, args=(model, sae, tokens), rounds=3, warmup_rounds=1, iterations=1)
    record_throughput(benchmark, tokens)
    assert len(ce) == 2
