"""The commands that list or select cases (`cases`, and the selection `fetch` and `plan` share) and print tables."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from sae_bench.cases.registry import SHIPPED_CASES, cases_selected_by, load_registries
from sae_bench.errors import EXIT_OK, BadInput


def cases(args: argparse.Namespace) -> int:
    """The registered cases (a sweep's expanded ones with --sweep) as a table: id, SAE, model, hook."""
    registry = load_registries((SHIPPED_CASES, *args.cases_dir))
    chosen = registry.sweep_cases(registry.sweep(args.sweep)) if args.sweep is not None else list(registry)
    if args.cases:
        selected = set(cases_selected_by(registry, args.cases))
        chosen = [case for case in chosen if case.id in selected]
    table = pd.DataFrame(
        [
            {
                "case": c.id,
                "sae": c.sae,
                "model": c.model,
                "hook": c.hook,
                "dtype": c.dtype,
                "groups": ",".join(c.groups),
            }
            for c in chosen
        ],
        columns=["case", "sae", "model", "hook", "dtype", "groups"],
    )
    write_table(table, args.format)
    print(f"{len(table)} cases", file=sys.stderr)
    return EXIT_OK


def selected_cases(args: argparse.Namespace, command: str) -> list:
    """The cases of -k / --case-id / --sweep (at least one), from the shipped and the user's case files."""
    if not (args.k or args.case_id or args.sweep):
        raise BadInput(f'{command}: say which cases: -k EXPR (e.g. -k "gemma-3-270m"), --case-id ID or --sweep NAME')
    registry = load_registries((SHIPPED_CASES, *args.cases_dir))
    chosen = {case.id for case in registry.sweep_cases(registry.sweep(args.sweep))} if args.sweep else set()
    chosen |= set(cases_selected_by(registry, args.k)) if args.k else set()
    for case_id in args.case_id:
        try:
            registry.get(case_id)
        except KeyError as err:
            raise BadInput(f"--case-id: {err.args[0]}") from None
        chosen.add(case_id)
    if not chosen:
        raise BadInput(f"{command}: -k {args.k!r} selects no case (`sae-bench cases` lists them)")
    return [case for case in registry if case.id in chosen]


def write_table(table, fmt: str) -> None:
    print(table.to_csv(index=False) if fmt == "csv" else table.to_markdown(index=False, floatfmt=".6g"))
