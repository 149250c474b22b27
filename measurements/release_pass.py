"""A release's SAEs at every layer of one model, four ways, side by side in one run: counted forward-pass
equivalents (FPE: rows through every block) and wall time. `python measurements/release_pass.py [N_ROWS]`.

(c) one shared pass across hooks (`evaluate_shared`: one clean forward keeps every hook's residual; from each hook
its spliced and zero-ablated rows), against (a) one shared pass per hook (prefix, clean and zero-ablated
continuations per hook), (b) each SAE alone as SAELens's `get_recons_loss` shapes it: three full forwards (clean,
spliced, zero-ablated), and (d) SAELens's own `run_evals` looped over the SAEs on the same rows and batches (CE, KL,
L0, EV and densities, as the engine measures them). The SAEs are random StandardSAEs (two widths per layer, the hook
each reads in its config) on the zoo's tiny-mistral base model and held-out rows: the count depends on the shapes,
not the weights.
"""

import sys
import time
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig

from sae_bench.engine.evaluate import EvalConfig, evaluate_shared
from sae_bench.engine.forward_cost import ForwardCost
from sae_bench.engine.splicing import encode_decode, spliced_residual, zero_ablated_residual
from sae_bench.sources.loading import load_model, load_zoo_data

WIDTHS = (256, 512)


def release(n_layers: int) -> list[tuple[StandardSAE, EvalConfig]]:
    pairs = []
    for layer in range(n_layers):
        hook = f"blocks.{layer}.hook_resid_post"
        for width in WIDTHS:
            torch.manual_seed(layer * 10 + width)
            config = StandardSAEConfig(d_in=128, d_sae=width)
            config.metadata.hook_name = hook
            pairs.append((StandardSAE(config).eval(), EvalConfig(hook=hook, batch_size=16, progress=False)))
    return pairs


@torch.inference_mode()
def three_forwards(model, sae, config, tokens) -> None:
    """(b): clean, spliced and zero-ablated runs of the whole model, one batch at a time (losses discarded)."""
    for rows in tokens.split(config.batch_size):
        model(rows, return_type="loss")
        for make in ("spliced", "zero"):

            def replace(x, hook, make=make):
                everywhere = torch.ones(x.shape[:2], dtype=torch.bool)
                if make == "zero":
                    return zero_ablated_residual(x, everywhere)
                return spliced_residual(x, everywhere, encode_decode(sae, x[everywhere], None).x_hat, None)

            model.run_with_hooks(rows, return_type="loss", fwd_hooks=[(config.hook, replace)])


def saelens_loop(model, pairs, tokens) -> None:
    """(d): SAELens's run_evals for each SAE in turn (the harness benchmarks/test_engine_speed.py uses)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the harness lives with the tests
    from tests.saelens_reference import saelens_run_evals

    for sae, config in pairs:
        saelens_run_evals(model, sae, tokens, config.batch_size)


def measure(label: str, model, run) -> tuple[float, float]:
    cost = ForwardCost()
    cost.watch(label, model)
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    model.reset_hooks(including_permanent=True)
    return cost.run[label] / model.cfg.n_layers, wall


def main(n_rows: int = 64) -> None:
    model = load_model("zoo:tiny-mistral/base", backend="hooked")  # (b) and (d) run HookedTransformer's own forward
    tokens = load_zoo_data("heldout")["input_ids"][:n_rows]
    pairs = release(model.cfg.n_layers)
    hooks = sorted({config.hook for _, config in pairs})
    results = {
        "(c) one pass across hooks": measure("c", model, lambda: evaluate_shared(model, pairs, tokens)),
        "(a) one shared pass per hook": measure(
            "a",
            model,
            lambda: [evaluate_shared(model, [p for p in pairs if p[1].hook == hook], tokens) for hook in hooks],
        ),
        "(b) three full forwards per SAE": measure(
            "b", model, lambda: [three_forwards(model, sae, config, tokens) for sae, config in pairs]
        ),
        "(d) SAELens run_evals per SAE": measure("d", model, lambda: saelens_loop(model, pairs, tokens)),
    }
    fpe_c, wall_c = results["(c) one pass across hooks"]
    print(f"{len(pairs)} SAEs at {len(hooks)} hooks of tiny-mistral/base, {n_rows} rows of {tokens.shape[1]} tokens")
    for label, (fpe, wall) in results.items():
        print(f"{label:34s} {fpe:8.1f} FPE ({fpe / fpe_c:4.2f}× c)  {wall:6.2f} s ({wall / wall_c:4.2f}× c)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)
