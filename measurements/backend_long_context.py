"""A long-context pair on each model backend: time and peak memory of one engine evaluation of 1024-token rows.

A random Mistral-architecture decoder (d_model 512, 8 layers, vocabulary 32000, full attention over 1024 positions;
the zoo's own models stop at 256) and a random 4096-wide SAE at blocks.4.hook_resid_pre, 4 rows of 1024 tokens in
batches of 2. Each backend runs in its own process, alternately, twice: the median of 2 evaluations after a
warm-up, and the process's peak resident memory during them (VmHWM, reset once the model is loaded: the model's
weights and what the evaluation adds; Linux only).

    .venv/bin/python measurements/backend_long_context.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HOOK, ROWS, CONTEXT, BATCH = "blocks.4.hook_resid_pre", 4, 1024, 2


def _peak_resident_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def _build(directory: Path) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=32000, max_position_embeddings=4096, sliding_window=None, tie_word_embeddings=False,
    )  # fmt: skip
    MistralForCausalLM(config).eval().save_pretrained(directory)


def _sae():
    from sae_lens import SAE, StandardSAEConfig

    torch.manual_seed(1)
    sae = SAE.from_dict(StandardSAEConfig(d_in=512, d_sae=4096).to_dict())
    for parameter in sae.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    sae.cfg.metadata.hook_name = HOOK
    return sae


def child(directory: str, backend: str) -> None:
    """One backend's measurement, printed as JSON."""
    warnings.filterwarnings("ignore")
    from sae_bench.engine.evaluate import EvalConfig, evaluate_transfer
    from sae_bench.sources.loading import load_model

    model, sae = load_model(directory, backend=backend), _sae()
    tokens = torch.randint(3, 32000, (ROWS, CONTEXT), generator=torch.Generator().manual_seed(2))
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on: loading's own peak is not the backend's
    config = EvalConfig(hook=HOOK, batch_size=BATCH)
    times, report = [], None
    for _ in range(3):
        start = time.perf_counter()
        report = evaluate_transfer(model, sae, tokens, config)
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "backend": backend, "seconds": statistics.median(times[1:]), "peak_mb": _peak_resident_mb(),
        "ce_spliced": report.ce_spliced, "kl_spliced": report.kl_spliced,
    }))  # fmt: skip


def main() -> None:
    from sae_bench.sources.loading import BACKENDS

    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder) / "mistral-long"
        _build(directory)
        from sae_bench.sources.loading import load_zoo_tokenizer

        load_zoo_tokenizer().save_pretrained(directory)
        results = []
        for _ in range(2):
            for backend in BACKENDS:
                run = subprocess.run(
                    [sys.executable, __file__, "--child", str(directory), backend],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    print(f"torch threads {torch.get_num_threads()}; {ROWS} rows x {CONTEXT} tokens, batches of {BATCH}")
    print(f"{'backend':8} {'seconds':>8} {'peak MB':>14} {'ce_spliced':>12} {'kl_spliced':>12}")
    for r in results:
        row = f"{r['backend']:8} {r['seconds']:>8.2f} {r['peak_mb']:>14.0f}"
        print(f"{row} {r['ce_spliced']:>12.6f} {r['kl_spliced']:>12.6f}")
    by = {b: statistics.median(r["seconds"] for r in results if r["backend"] == b) for b in BACKENDS}
    print(f"hooked / bridge time: {by['hooked'] / by['bridge']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
