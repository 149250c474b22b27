"""Peak memory above the models and tokens/s of the universality pass with a wide TopK SAE (k 64, width 131072) on
the zoo's tiny-mistral base → instruct pair: `python measurements/universality_memory.py [N_ROWS]`.

Run it on two commits to compare implementations (one process each: peak resident memory is per process).
"""

import resource
import sys
import time

import torch
from sae_lens import TopKSAE, TopKSAEConfig

from sae_bench.engine.universality import PairedConfig, evaluate_universality
from sae_bench.sources.loading import load_model, load_zoo_data

HOOK = "blocks.2.hook_resid_pre"


def main(n_rows: int = 16) -> None:
    base, finetuned = load_model("zoo:tiny-mistral/base"), load_model("zoo:tiny-mistral/instruct")
    tokens = load_zoo_data("heldout")["input_ids"][:n_rows]
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=base.cfg.d_model, d_sae=131072, k=64))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
    sae.cfg.metadata.hook_name = HOOK
    config = PairedConfig(hook=HOOK, batch_size=8, progress=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    report = evaluate_universality(base, finetuned, sae, tokens, config)
    wall = time.perf_counter() - start
    peak_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20  # ru_maxrss is in KiB
    similarity = float(report.activation_similarity.nan_to_num().mean())
    print(
        f"{tokens.numel()} tokens: {tokens.numel() / wall:.0f} tokens/s, peak memory +{peak_gb:.2f} GB above the "
        f"models; mean activation similarity {similarity:.6f}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16)
