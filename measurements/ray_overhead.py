"""The zoo suite through a two-node Ray cluster on 127.0.0.1 against the local executor, side by side in one run:
wall time of each, the number of units, and the overhead per unit. `python measurements/ray_overhead.py`.

Both are `pytest benchmarks -m zoo --benchmark-disable --no-results`; the cluster is a head and a worker node of
one CPU each (`tests/ray_cluster.py`), so at most two units run at once, each with the driver's torch threads.
"""

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.ray_cluster import ray_env, two_node_cluster  # noqa: E402

COMMAND = [sys.executable, "-m", "pytest", "benchmarks", "-m", "zoo", "--benchmark-disable", "--no-results", "-q"]
COMMAND += ["-p", "no:cacheprovider"]


def timed(*args: str) -> float:
    start = time.perf_counter()
    run = subprocess.run([*COMMAND, *args], cwd=REPO, env=ray_env(), capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(run.stdout[-3000:])
    return time.perf_counter() - start


def units() -> int:
    from sae_bench.cases.registry import SHIPPED_CASES, load_registry
    from sae_bench.execution.ray_units import units_of

    return len(units_of(case for case in load_registry(SHIPPED_CASES) if case.tier == "zoo"))


def main() -> None:
    local = timed()
    with two_node_cluster() as address:
        remote = timed("--ray", address)
    n = units()
    print(f"zoo suite, local executor: {local:.0f} s; two-node Ray cluster: {remote:.0f} s ({remote / local:.2f}x)")
    print(f"{n} units; overhead {(remote - local) / n:+.1f} s per unit")


if __name__ == "__main__":
    main()
