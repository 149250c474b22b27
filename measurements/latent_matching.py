"""Time and peak memory of the release gate's latent matching (`sae_bench.engine.latent_matching`) for random
decoders at d_model 512: 16k × 16k and 65k × 65k latents, each in a fresh process (peak resident memory above the
decoders), and the memory bound for 262k × 262k.

    python measurements/latent_matching.py
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

D_MODEL = 512
SIZES = (16_384, 65_536)


def child(d_sae: int) -> None:
    import torch  # noqa: PLC0415 - the child process only

    from sae_bench.engine.latent_matching import BLOCK, match_latents  # noqa: PLC0415 - the child process only

    generator = torch.Generator().manual_seed(0)
    old = torch.randn(d_sae, D_MODEL, generator=generator)
    new = torch.randn(d_sae, D_MODEL, generator=generator)
    with open("/proc/self/status") as status:
        loaded = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    start = time.perf_counter()
    match = match_latents(old, new)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(seconds, peak - loaded, match.matched, BLOCK)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return 0
    block = 4096
    for d_sae in SIZES:
        out = subprocess.run([sys.executable, __file__, "--child", str(d_sae)], capture_output=True, text=True)
        seconds, extra_kib, matched, block = out.stdout.split()
        print(
            f"{d_sae} x {d_sae}: {float(seconds):.1f} s, peak {int(extra_kib) / 1024:.0f} MiB above the two decoders "
            f"({2 * d_sae * D_MODEL * 4 / 2**20:.0f} MiB), {matched} random pairs matched"
        )
    d_sae = 262_144
    unit = 2 * d_sae * D_MODEL * 4  # the two normalised copies
    bound = unit + int(block) ** 2 * 4 * 2 + 4 * d_sae * 8
    print(
        f"262144 x 262144 (not run): at most {bound / 2**30:.2f} GiB beside the decoders (normalised copies, two "
        f"{block} x {block} blocks, four per-latent vectors); time grows with d_sae²: about "
        f"{(262_144 / SIZES[-1]) ** 2:.0f} x the 65k run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
