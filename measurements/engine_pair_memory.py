"""Peak memory of the engine pair (tiny-mistral instruct, its base SAE, 32,768 held-out tokens) under two settings,
each in a fresh process: the peak resident memory of the evaluation above what the process held once model, SAE and
tokens were loaded, and its seconds; the two settings' children alternate, `REPEATS` each, and the medians are
compared. The children run with glibc's mmap threshold fixed at 128 KiB (`ALLOCATOR`): by default it grows with the
blocks freed, so freed tensors stayed resident and one child's peak moved by ±25 MiB.

    python measurements/engine_pair_memory.py dtype        # bfloat16 against float32
    python measurements/engine_pair_memory.py explain      # token classes and feature statistics against neither
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

ROWS = 256
"""256 rows × 128 tokens = 32,768 tokens."""
REPEATS = 3
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""Every tensor above 128 KiB is its own mapping, returned when freed: the peak then follows the live tensors."""
COMPARISONS = {
    "dtype": {"float32": ("float32", False), "bfloat16": ("bfloat16", False)},
    "explain": {"plain": ("float32", False), "explained": ("float32", True)},
}
"""Each comparison's two settings, the baseline first: (the model's dtype, whether explanations are streamed)."""


def measure(dtype: str, explain: bool) -> None:
    """In this process: load, then evaluate; print the loaded RSS, the peak and the seconds (KiB, KiB, s)."""
    from sae_bench import EvalConfig, evaluate_transfer, load_model, load_sae, load_zoo_data  # noqa: PLC0415 - the child process only
    from sae_bench.engine.backends import torch_dtype  # noqa: PLC0415 - the child process only

    model = load_model("zoo:tiny-mistral/instruct", dtype=torch_dtype(dtype))
    sae = load_sae("zoo:tiny-mistral/base-sae")
    tokens = load_zoo_data("heldout")["input_ids"][:ROWS]
    with open("/proc/self/status") as status:
        loaded = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    config = EvalConfig(
        hook="blocks.2.hook_resid_pre", batch_size=32, progress=False, token_classes=explain, feature_stats=explain
    )
    start = time.perf_counter()
    evaluate_transfer(model, sae, tokens, config)
    seconds = time.perf_counter() - start
    print(loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, f"{seconds:.2f}")


def compare(name: str) -> None:
    """Run both settings of comparison `name`, alternating children, and print their median peaks and the ratios."""
    found: dict[str, list[tuple[int, float]]] = {label: [] for label in COMPARISONS[name]}
    for _ in range(REPEATS):
        for label, (dtype, explain) in COMPARISONS[name].items():
            command = [sys.executable, __file__, "--child", dtype, str(explain)]
            out = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ | ALLOCATOR)
            loaded, peak, seconds = out.stdout.split()[-3:]
            found[label].append((int(peak) - int(loaded), float(seconds)))
    medians = {}
    for label, runs in found.items():
        medians[label] = (statistics.median(p for p, _ in runs), statistics.median(s for _, s in runs))
        peaks = ", ".join(f"{p / 1024:.0f}" for p, _ in runs)
        print(f"{label}: evaluation peak {medians[label][0] / 1024:.1f} MiB above the loaded process (median of "
              f"{peaks}), {medians[label][1]:.2f} s")  # fmt: skip
    (base, base_s), (other, other_s) = medians.values()
    print(f"{' / '.join(reversed(medians))}: peak {other / base:.2f}, seconds {other_s / base_s:.2f} (medians)")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        measure(sys.argv[2], sys.argv[3] == "True")
        return 0
    if len(sys.argv) != 2 or sys.argv[1] not in COMPARISONS:
        print(f"usage: python {__file__} {{{','.join(COMPARISONS)}}}", file=sys.stderr)
        return 2
    compare(sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
