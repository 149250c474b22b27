"""The zoo suite with --explain against without, in one run: wall time of `pytest benchmarks -m zoo` each way (the
two alternating, `--rounds` each, a fresh results database per run, since --explain's tables are written there), the
ratio of the medians, the same for CPU time (user + system of the run: steadier than wall time on a shared
machine), and the forward-pass table of each (--explain adds no pass: the tables must be equal).

    python measurements/explain_overhead.py [--rounds 3] [-k EXPR]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = re.compile(r"^= forward passes .*?\n(.*?)\n(?:=|$)", re.S | re.M)


def run(explain: bool, select: str | None, folder: Path) -> tuple[float, float, str]:
    """One `pytest benchmarks -m zoo` (with --explain or not): its wall and CPU seconds and its forward-pass
    table."""
    results = folder / f"results-{time.monotonic_ns()}.sqlite"
    command = [sys.executable, "-m", "pytest", "benchmarks", "-m", "zoo", "-q", "-p", "no:cacheprovider",
               "--benchmark-disable", "--results", str(results), *(["-k", select] if select else []),
               *(["--explain"] if explain else [])]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}")
    return seconds, cpu, TABLE.search(done.stdout).group(1)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-k", dest="select", help="a -k expression: a part of the zoo suite")
    args = parser.parse_args()
    seconds: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    tables: dict[bool, set[str]] = {False: set(), True: set()}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for explain in (False, True):
                took, used, table = run(explain, args.select, Path(folder))
                seconds[explain].append(took)
                cpu[explain].append(used)
                tables[explain].add(table)
                print(f"{'--explain' if explain else 'plain    '}: {took:.1f} s, CPU {used:.1f} s", flush=True)
    plain, explained = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"zoo suite with --explain / without: {explained / plain:.3f} (medians {explained:.1f} s / {plain:.1f} s)")
    plain_cpu, explained_cpu = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"CPU time with --explain / without: {explained_cpu / plain_cpu:.3f} (medians {explained_cpu:.1f} s / "
          f"{plain_cpu:.1f} s)")  # fmt: skip
    same = len(tables[False] | tables[True]) == 1
    print("forward-pass table: " + ("the same with --explain" if same else "DIFFERS with --explain"))
    print(next(iter(tables[True])))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
