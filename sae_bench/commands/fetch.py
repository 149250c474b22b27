"""The `fetch` command: download what the selected hub cases need."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from sae_bench.commands.cases import selected_cases, write_table
from sae_bench.errors import EXIT_BAD_INPUT, EXIT_OK
from sae_bench.sources.fetch import fetch, human_size


def fetch_command(args: argparse.Namespace) -> int:
    """Download what the selected hub cases need (models, SAEs, artifacts, dataset records); --dry-run lists it."""
    cases = selected_cases(args, "fetch")
    hub = [case for case in cases if case.tier == "hub"]
    print(f"{len(cases)} cases selected, {len(hub)} of them hub cases (zoo cases need nothing)", file=sys.stderr)
    downloads, problems = fetch(hub, dry_run=args.dry_run)
    rows = [{"what": d.what, "cases": len(d.cases), "size": human_size(d.size), "status": d.status} for d in downloads]
    write_table(pd.DataFrame(rows, columns=["what", "cases", "size", "status"]), "md")
    known = [d.size for d in downloads if d.size is not None]
    verb = "to fetch" if args.dry_run else "fetched"
    print(f"{human_size(sum(known))} {verb} (sizes the hub states; datasets: once streamed)", file=sys.stderr)
    for problem in problems:
        print(f"not fetched: {problem}", file=sys.stderr)
    return EXIT_BAD_INPUT if problems else EXIT_OK
