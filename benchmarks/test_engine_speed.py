"""Speed of the one-pass engine against SAELens's evals and against the no-metrics floor on the same tokens, and of
a shared pass over a family grid against its pairs one at a time; the numbers agree in each comparison.

The engine group measures the issue's pair on each model backend (`sae_bench.engine.backends`: HookedTransformer and
TransformerBridge; SAELens's `run_evals` runs on HookedTransformer, its own), tiny-mistral's instruct model with the
base SAE at blocks.2.hook_resid_pre (layer 2 of 4), the first 256 held-out rows of 128 tokens, batches of 8. SAELens's
`run_evals` (CE, KL, L0, EV / MSE, feature density) runs the full model three times for CE and KL (clean,
spliced, ablated) and once more to the hook for the rest: 3.5 forward passes. The engine runs the prefix once and
the suffix twice per batch (clean, spliced), and the zero-ablated row (all zeros in every batch) once: 1.5. The
floor (`run_floor`) does that much work and no scoring: prefix, SAE on every position, one stacked 2× continuation
to logits per batch, the zero-ablated row once. Read each ratio off the benchmark table: the factor in
parentheses beside each time, per group ("engine", "family-grid").
"""

import pytest
import torch

from sae_bench.engine.evaluate import EvalConfig, estimate_scaling_factor, evaluate_shared, evaluate_transfer
from sae_bench.engine.outliers import OutlierPolicy
from sae_bench.engine.splicing import (
    encode_decode,
    final_residual_from_hook,
    logits_of_final_rows,
    resolve_hook,
    run_to_hook,
    spliced_residual,
    zero_ablated_residual,
)
from sae_bench.sources.loading import BACKENDS
from tests.saelens_reference import saelens_run_evals

HOOK = "blocks.2.hook_resid_pre"
BATCH = 8


@pytest.fixture(scope="module")
def pair(device):
    """tiny-mistral instruct on each backend, the base SAE, the first 256 held-out rows (the rows this benchmark has
    always timed; the zoo holds 1274)."""
    from sae_bench.sources.loading import load_model, load_sae, load_zoo_data

    models = {backend: load_model("zoo:tiny-mistral/instruct", device=device, backend=backend) for backend in BACKENDS}
    sae = load_sae("zoo:tiny-mistral/base-sae", device=device)
    tokens = load_zoo_data("heldout")["input_ids"][:256]
    assert tokens.shape == (256, 128) and sae.cfg.metadata.hook_name == HOOK
    return models, sae, tokens


@pytest.fixture(scope="module")
def saelens_metrics(pair):
    models, sae, tokens = pair
    return run_saelens(models["hooked"], sae, tokens)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_engine(model, sae, tokens):
    report = evaluate_transfer(model, sae, tokens, EvalConfig(hook=HOOK, batch_size=BATCH, progress=False))
    synchronize()
    return report


def run_saelens(model, sae, tokens):
    """SAELens's run_evals with the engine's metrics, on the same rows in the same batches, nothing excluded."""
    metrics = saelens_run_evals(model, sae, tokens, BATCH)
    synchronize()
    return metrics


def record_throughput(benchmark, tokens):
    """tokens/s into the saved JSON; nothing when timing is off (--benchmark-disable)."""
    if benchmark.stats is not None:
        benchmark.extra_info["tokens_per_s"] = tokens.numel() / benchmark.stats.stats.mean


ROUNDS = {"rounds": 5, "warmup_rounds": 1, "iterations": 1}


@pytest.mark.benchmark(group="engine")
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_pass_engine(benchmark, pair, saelens_metrics, backend):
    models, sae, tokens = pair
    report = benchmark.pedantic(run_engine, args=(models[backend], sae, tokens), **ROUNDS)
    record_throughput(benchmark, tokens)
    saelens = saelens_metrics
    # KL is left out: SAELens's also averages the last position, which predicts no token
    # (tests/engine/test_against_saelens.py compares KL position by position)
    ce = saelens["model_performance_preservation"]
    assert report.ce_clean == pytest.approx(ce["ce_loss_without_sae"], abs=1e-5)
    assert report.ce_spliced == pytest.approx(ce["ce_loss_with_sae"], abs=1e-5)
    assert report.ce_zero_ablation == pytest.approx(ce["ce_loss_with_ablation"], abs=1e-5)
    assert report.l0 == pytest.approx(saelens["sparsity"]["l0"], abs=1e-4)
    assert report.explained_variance == pytest.approx(saelens["reconstruction_quality"]["explained_variance"], abs=1e-5)


@pytest.mark.benchmark(group="engine")
def test_one_pass_engine_with_token_classes(benchmark, pair):
    """The same pass on the default backend with every metric also streamed per token class (`sae-bench explain`):
    its ratio to test_one_pass_engine[bridge] is the classes' cost; the whole-pass numbers are unchanged."""
    models, sae, tokens = pair
    config = EvalConfig(hook=HOOK, batch_size=BATCH, progress=False, token_classes=True)
    report = benchmark.pedantic(evaluate_transfer, args=(models["bridge"], sae, tokens, config), **ROUNDS)
    plain = run_engine(models["bridge"], sae, tokens)
    assert report.to_row() == plain.to_row() and sum(c["tokens"] for c in report.token_classes.values()) == 256 * 128


@pytest.mark.benchmark(group="engine")
def test_saelens_evals_same_tokens(benchmark, pair):
    models, sae, tokens = pair
    metrics = benchmark.pedantic(run_saelens, args=(models["hooked"], sae, tokens), **ROUNDS)
    record_throughput(benchmark, tokens)
    assert metrics["token_stats"]["total_tokens_eval_reconstruction"] == tokens.numel()


@torch.inference_mode()
def run_floor(model, sae, tokens):
    """The work no evaluation can skip, and nothing more: per batch the prefix, the SAE on every position, and one
    stacked clean / spliced continuation to logits; the zero-ablated row (all zeros, the same in every batch) once."""
    site = resolve_hook(model, HOOK)
    zero = None
    for batch in tokens.split(BATCH):
        x = run_to_hook(model, batch.to(model.cfg.device), site)
        everywhere = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        x_hat = encode_decode(sae, x[everywhere], None).x_hat
        if zero is None:
            zero_final = final_residual_from_hook(model, zero_ablated_residual(x[:1], everywhere[:1]), site)
            zero = logits_of_final_rows(model, zero_final.flatten(0, 1))
        final = final_residual_from_hook(model, torch.cat([x, spliced_residual(x, everywhere, x_hat, None)]), site)
        logits_of_final_rows(model, final.flatten(0, 1))
    synchronize()


@pytest.mark.benchmark(group="engine")
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_metrics_floor(benchmark, pair, backend):
    models, sae, tokens = pair
    benchmark.pedantic(run_floor, args=(models[backend], sae, tokens), **ROUNDS)
    record_throughput(benchmark, tokens)


# -- a family grid: one shared pass per model against every pair alone ------------------------------------------
GRID_SAES = ("base-sae", "instruct-sae", "math-sae", "base-sae-ft")
GRID_MODELS = ("base", "instruct", "math", "dose-5", "dose-20", "dose-400")
GRID_HOOK = "blocks.2.hook_resid_pre"


@pytest.fixture(scope="module")
def grid(device):
    """tiny-mistral's 4 ReLU SAEs × 6 models, each pair unfiltered and filtered (> 3× the model's mean norm), on 32
    held-out rows."""
    from sae_bench.sources.loading import load_model, load_sae, load_zoo_data

    tokens = load_zoo_data("heldout")["input_ids"][:32]
    models = {name: load_model(f"zoo:tiny-mistral/{name}", device=device) for name in GRID_MODELS}
    saes = {name: load_sae(f"zoo:tiny-mistral/{name}", device=device) for name in GRID_SAES}
    configs = {}
    for name, model in models.items():
        mean_norm = model.cfg.d_model**0.5 / estimate_scaling_factor(model, tokens, GRID_HOOK)
        policy = OutlierPolicy(3.0 * mean_norm, norm="raw")
        configs[name] = [EvalConfig(hook=GRID_HOOK, batch_size=8, outliers=p, progress=False) for p in (None, policy)]
    return models, saes, configs, tokens


def run_pairs_alone(models, saes, configs, tokens):
    return [
        evaluate_transfer(model, sae, tokens, config)
        for name, model in models.items()
        for sae in saes.values()
        for config in configs[name]
    ]


def run_shared_per_model(models, saes, configs, tokens):
    reports = []
    for name, model in models.items():
        reports += evaluate_shared(model, [(sae, c) for sae in saes.values() for c in configs[name]], tokens)
    return reports


@pytest.mark.benchmark(group="family-grid")
def test_family_grid_pairs_one_at_a_time(benchmark, grid):
    reports = benchmark.pedantic(run_pairs_alone, args=grid, rounds=3, warmup_rounds=0, iterations=1)
    assert len(reports) == len(GRID_MODELS) * len(GRID_SAES) * 2


@pytest.mark.benchmark(group="family-grid")
def test_family_grid_shared_pass_per_model(benchmark, grid):
    reports = benchmark.pedantic(run_shared_per_model, args=grid, rounds=3, warmup_rounds=0, iterations=1)
    alone = run_pairs_alone(*grid)
    assert [r.ce_spliced for r in reports] == [r.ce_spliced for r in alone]
    assert [r.kl_spliced for r in reports] == [r.kl_spliced for r in alone]
