"""The commands that read the results database: `report`, `compare`, `history`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sae_bench.commands.cases import write_table
from sae_bench.errors import EXIT_OK, EXIT_REGRESSION, BadInput
from sae_bench.reports.figures import save
from sae_bench.reports.seed_report import build_report
from sae_bench.results_store.database import ResultsDB, default_path, is_postgres
from sae_bench.results_store.history import (
    REGRESSIONS,
    VANISHED,
    check_finished,
    compare_runs,
    history,
    history_figure,
    previous_run,
)


def open_results(args: argparse.Namespace):
    location = args.results or default_path()
    if is_postgres(location):
        return ResultsDB(location, read_only=True)
    path = Path(location)
    if not path.exists():
        raise BadInput(f"no results database at {path}; run `pytest benchmarks` first (or pass --results PATH)")
    return ResultsDB(path, read_only=True)


def report(args: argparse.Namespace) -> int:
    page = build_report(open_results(args), args.out, run=args.run_id, cases=args.cases)
    print(f"wrote {page} and {args.out / 'report.md'}")
    return 0


def compare(args: argparse.Namespace) -> int:
    db = open_results(args)
    run = db.resolve_run(args.run_id)
    baseline = db.resolve_run(args.baseline) if args.baseline else previous_run(db, run)
    if not args.allow_partial:
        check_finished(db, baseline, run)
    table = compare_runs(
        db, baseline, run, allow_redefined=args.allow_redefined, allow_other_dtype=args.allow_other_dtype
    )
    vanished = table[table.verdict == VANISHED]
    moved = len(table) - len(vanished)
    gone = f", {len(vanished)} vanished ({vanished.case_id.nunique()} cases)" if len(vanished) else ""
    print(f"run {run} against run {baseline}: {moved} metrics moved{gone}", file=sys.stderr)
    write_table(table, args.format)
    return EXIT_REGRESSION if table.verdict.isin(REGRESSIONS).any() else EXIT_OK


def history_command(args: argparse.Namespace) -> int:
    table = history(open_results(args), args.case, args.metric)
    write_table(table, args.format)
    if args.out is None:  # nothing is written where the command runs unless asked
        print("pass --out FILE.png for the trend figure", file=sys.stderr)
        return EXIT_OK
    save(history_figure(table, args.case, args.metric), args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK
