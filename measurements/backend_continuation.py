"""The engine's model work on each backend, side by side in one run: per batch, run to the hook once, then continue
the clean, a spliced and a zero-ablated residual from it, stacked in one call. `HookedTransformer` does it with
`stop_at_layer` / `start_at_layer`; the TransformerBridge's HF model with `sae_bench.engine.hf_continuation` (its own
forward, the layers before the hook skipped). Prints each backend's median seconds and their ratio, at the engine's
rows (16 x 128) and at the zoo models' full context (4 x 256), on each zoo architecture.

    .venv/bin/python measurements/backend_continuation.py
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch

from sae_bench.engine.hf_continuation import continue_from_hook, run_to_hook

HOOK_LAYER = 2  # blocks.2.hook_resid_pre, the zoo's hook
REPEATS = 5


def _median_seconds(step) -> float:
    step()  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _hooked_step(model, tokens):
    def step():
        x = model(tokens, stop_at_layer=HOOK_LAYER)
        stacked = torch.cat([x, x * 0.9, torch.zeros_like(x)])
        model(stacked, start_at_layer=HOOK_LAYER, tokens=tokens.repeat(3, 1))

    return step


def _bridge_step(model, tokens):
    def step():
        x = run_to_hook(model, tokens, HOOK_LAYER)
        stacked = torch.cat([x, x * 0.9, torch.zeros_like(x)])
        continue_from_hook(model, tokens.repeat(3, 1), HOOK_LAYER, stacked)

    return step


def main() -> None:
    warnings.filterwarnings("ignore")
    from transformer_lens.model_bridge import TransformerBridge

    from sae_bench.sources.loading import load_model, load_zoo_tokenizer
    from sae_bench.sources.zoo.artifacts import verified_directory

    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}; medians of {REPEATS}")
    print(f"{'model':22} {'rows x tokens':>14} {'HookedTransformer':>18} {'bridge (HF)':>12} {'ratio':>6}")
    for name in ("tiny-mistral/base", "tiny-qwen2/base", "tiny-gemma/base"):
        hooked = load_model(f"zoo:{name}", backend="hooked")
        bridge = TransformerBridge.boot_transformers(
            str(verified_directory(f"models/{name}")), device="cpu", tokenizer=load_zoo_tokenizer()
        )
        for rows, context in ((16, 128), (4, 256)):  # 256: the zoo models' n_ctx
            tokens = torch.randint(3, hooked.cfg.d_vocab, (rows, context))
            with torch.inference_mode():
                ht = _median_seconds(_hooked_step(hooked, tokens))
                hf = _median_seconds(_bridge_step(bridge.original_model, tokens))
            print(f"{name:22} {f'{rows} x {context}':>14} {ht:>17.3f}s {hf:>11.3f}s {ht / hf:>5.2f}x")


if __name__ == "__main__":
    main()
