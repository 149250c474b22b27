"""The engine's speed ratio to SAELens's `run_evals` (float32, the default backend), at this tree and at another
commit, side by side in one run: each tree's child process times its engine and SAELens on the pair of
benchmarks/test_engine_speed.py (tiny-mistral instruct, base SAE, the first 256 held-out rows, batches of 8), the
two trees' children alternating, and prints SAELens time / engine time per tree.

    python measurements/engine_speed_against_commit.py REV [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import statistics, sys, time
sys.path.insert(0, {root!r})
from sae_bench.engine.evaluate import EvalConfig, evaluate_transfer
from sae_bench.sources.loading import load_model, load_sae, load_zoo_data
from tests.saelens_reference import saelens_run_evals
from sae_bench.engine.backends import hooked_transformer_on_purpose
bridge = load_model("zoo:tiny-mistral/instruct")
with hooked_transformer_on_purpose():
    hooked = load_model("zoo:tiny-mistral/instruct", backend="hooked")
sae = load_sae("zoo:tiny-mistral/base-sae")
tokens = load_zoo_data("heldout")["input_ids"][:256]
config = EvalConfig(hook="blocks.2.hook_resid_pre", batch_size=8, progress=False)
def timed(run):
    start = time.perf_counter(); run(); return time.perf_counter() - start
timed(lambda: evaluate_transfer(bridge, sae, tokens, config)); timed(lambda: saelens_run_evals(hooked, sae, tokens, 8))
engine = [timed(lambda: evaluate_transfer(bridge, sae, tokens, config)) for _ in range({rounds})]
saelens = [timed(lambda: saelens_run_evals(hooked, sae, tokens, 8)) for _ in range({rounds})]
print(statistics.median(engine), statistics.median(saelens))
"""


def measure(root: Path, rounds: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(root=str(root), rounds=rounds)],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    engine, saelens = out.stdout.split()[-2:]
    return float(engine), float(saelens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the commit to compare this tree with (e.g. HEAD~1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two trees")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        other = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), args.rev], cwd=ROOT, check=True)
        try:
            ratios: dict[str, list[float]] = {"this tree": [], args.rev: []}
            for _ in range(args.repeats):
                for label, root in (("this tree", ROOT), (args.rev, other)):
                    engine, saelens = measure(root, args.rounds)
                    ratios[label].append(saelens / engine)
                    print(f"{label}: engine {engine:.2f} s, SAELens {saelens:.2f} s, ratio {saelens / engine:.2f}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=False)
    for label, values in ratios.items():
        print(f"{label}: SAELens / engine, median of {len(values)}: {statistics.median(values):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
