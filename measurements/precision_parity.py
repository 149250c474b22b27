"""Precision parity on the zoo: every zoo case run in a half precision (`pytest benchmarks -m zoo --dtype D
--verdict-table FILE`) against its float32 expectations. Per metric, the largest absolute shift from the float32
value and how many cases stay within their own float32 tolerance.

    python measurements/precision_parity.py bfloat16 [-k EXPR]      # runs the suite, then prints the table
    python measurements/precision_parity.py bfloat16 --table FILE   # a verdict table a run already wrote
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
METRICS = (
    "ce_loss_recovered",
    "ce_delta",
    "kl_spliced",
    "explained_variance",
    "l0",
    "dead_fraction",
    "activation_similarity_regular_mean",
    "logit_similarity_regular_mean",
)
"""The metrics the parity table reports (CE recovered, ΔCE, KL, EV, L0, density, the universality similarities)."""


def parity(table: pd.DataFrame) -> pd.DataFrame:
    """Per metric: cases judged, largest |half − float32|, and cases within their float32 tolerance."""
    judged = table[table.metric.isin(METRICS) & table.expected.notna() & table.got.notna()]
    shift = (judged.got - judged.expected).abs()
    rows = []
    for metric in METRICS:
        mine = judged.metric == metric
        if not mine.any():
            continue
        within = int((judged.verdict[mine] == "ok").sum())
        rows.append({
            "metric": metric,
            "cases": int(mine.sum()),
            "largest shift": float(shift[mine].max()),
            "within float32 tolerance": f"{within}/{int(mine.sum())}",
        })  # fmt: skip
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dtype", choices=("bfloat16", "float16"))
    parser.add_argument("-k", default="", help="a -k expression over the zoo cases (default: all of them)")
    parser.add_argument("--table", type=Path, help="a verdict table (.csv) a run with --dtype already wrote")
    args = parser.parse_args()
    table = args.table
    if table is None:
        table = Path(tempfile.mkdtemp()) / "verdicts.csv"
        command = [sys.executable, "-m", "pytest", str(ROOT / "benchmarks"), "-m", "zoo", "--dtype", args.dtype]
        command += ["--no-results", "--benchmark-disable", "-q", f"--verdict-table={table}"]
        command += ["-k", args.k] if args.k else []
        subprocess.run(command, cwd=ROOT, check=False)  # a metric beyond its tolerance fails its item: expected here
    print(parity(pd.read_csv(table)).to_markdown(index=False, floatfmt=".3g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
