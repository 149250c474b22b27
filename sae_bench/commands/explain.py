"""`sae-bench explain CASE`: where a transfer case's loss goes, token class by token class (and beside another case,
e.g. the model's own SAE, with --against)."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from sae_bench.cases.registry import SHIPPED_CASES, load_registries
from sae_bench.commands.cases import write_table
from sae_bench.engine.token_classes import CLASS_METRICS
from sae_bench.errors import EXIT_OK, BadInput
from sae_bench.execution.executor import CaseExecutor
from sae_bench.suite.runner import check_device, missing_for


def class_table(table: dict[str, dict[str, float | None]]) -> pd.DataFrame:
    """One row per token class: its metrics and its share of the spliced loss increase (Σ ΔCE over its
    predictions / Σ ΔCE over all)."""
    frame = pd.DataFrame.from_dict(table, orient="index")[list(CLASS_METRICS)]
    added = (frame.ce_delta.fillna(0.0) * frame.predictions).astype(float)
    total = float(added.sum())
    frame["share_of_ce_delta"] = added / total if total else None
    return frame.rename_axis("class").reset_index()


def explain(args: argparse.Namespace) -> int:
    check_device(args.device)
    registry = load_registries((SHIPPED_CASES, *args.cases_dir))
    executor = CaseExecutor(device=args.device)
    tables = []
    for case_id in [args.case, *([args.against] if args.against else [])]:
        try:
            case = registry.get(case_id)
        except KeyError as err:
            raise BadInput(f"explain: {err.args[0]} (`sae-bench cases` lists them)") from None
        if reason := missing_for(case, args.device):
            raise BadInput(f"explain: {reason}")
        table = class_table(executor.token_classes(case))
        tables.append(table.assign(case=case.id))
        print(f"{case.id} ({case.dtype}, {case.tokens} tokens of {case.dataset}):", file=sys.stderr)
    write_table(pd.concat(tables, ignore_index=True)[["case", *tables[0].columns[:-1]]], args.format)
    return EXIT_OK
