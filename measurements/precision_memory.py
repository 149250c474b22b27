"""Peak memory of the engine pair (tiny-mistral instruct, its base SAE, 32,768 held-out tokens) with the model in
bfloat16 against float32: each dtype in a fresh process, the peak resident memory of the evaluation above what the
process held once model, SAE and tokens were loaded.

    python measurements/precision_memory.py
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

ROWS = 256
"""256 rows × 128 tokens = 32,768 tokens."""


def measure(dtype: str) -> None:
    """In this process: load, then evaluate; print the loaded RSS, the peak and the seconds (KiB, KiB, s)."""
    from sae_bench import EvalConfig, evaluate_transfer, load_model, load_sae, load_zoo_data  # noqa: PLC0415 - the child process only
    from sae_bench.engine.backends import torch_dtype  # noqa: PLC0415 - the child process only

    model = load_model("zoo:tiny-mistral/instruct", dtype=torch_dtype(dtype))
    sae = load_sae("zoo:tiny-mistral/base-sae")
    tokens = load_zoo_data("heldout")["input_ids"][:ROWS]
    with open("/proc/self/status") as status:
        loaded = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    start = time.perf_counter()
    evaluate_transfer(model, sae, tokens, EvalConfig(hook="blocks.2.hook_resid_pre", batch_size=32, progress=False))
    seconds = time.perf_counter() - start
    print(loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, f"{seconds:.2f}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        measure(sys.argv[2])
        return 0
    found = {}
    for dtype in ("float32", "bfloat16"):
        out = subprocess.run([sys.executable, __file__, "--child", dtype], capture_output=True, text=True, check=True)
        loaded, peak, seconds = out.stdout.split()[-3:]
        found[dtype] = (int(peak) - int(loaded), float(seconds))
        print(f"{dtype}: evaluation peak {found[dtype][0] / 1024:.1f} MiB above the loaded process, {seconds} s")
    ratio = found["bfloat16"][0] / found["float32"][0]
    print(f"bfloat16 / float32 peak: {ratio:.2f}; CPU time ratio {found['bfloat16'][1] / found['float32'][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
