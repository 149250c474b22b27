"""`sae-bench explain CASE`: where a transfer case's loss goes, token class by token class (and beside another case,
e.g. the model's own SAE, with --against)."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from sae_bench.cases.registry import SHIPPED_CASES, load_registries
from sae_bench.commands.cases import write_table
from sae_bench.engine.feature_breaks import RANKINGS, SHIFT, FeatureBreaks, feature_table
from sae_bench.engine.feature_stats import MIN_FIRINGS, FeatureShift, FeatureSide
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


def _case(registry, case_id: str, device: str):
    try:
        case = registry.get(case_id)
    except KeyError as err:
        raise BadInput(f"explain: {err.args[0]} (`sae-bench cases` lists them)") from None
    if reason := missing_for(case, device):
        raise BadInput(f"explain: {reason}")
    return case


def explain(args: argparse.Namespace) -> int:
    check_device(args.device)
    registry = load_registries((SHIPPED_CASES, *args.cases_dir))
    case = _case(registry, args.case, args.device)
    own = _case(registry, args.own, args.device) if args.own else None
    if own is not None and (own.sae != case.sae or own.paired):
        raise BadInput(
            f"explain --own {own.id}: it must be the same SAE ({case.sae}) on the model it was trained on, a transfer "
            f"case; it evaluates {own.sae}"
        )
    executor = CaseExecutor(device=args.device)
    reports, tables = {}, []
    for each in [case, *([_case(registry, args.against, args.device)] if args.against else [])]:
        reports[each.id] = executor.explain(each)
        tables.append(class_table(reports[each.id].token_classes).assign(case=each.id))
        print(f"{each.id} ({each.dtype}, {each.tokens} tokens of {each.dataset}):", file=sys.stderr)
    write_table(pd.concat(tables, ignore_index=True)[["case", *tables[0].columns[:-1]]], args.format)
    if own is not None:
        sides = {name: _side(executor, each, reports.get(each.id)) for name, each in (("own", own), ("other", case))}
        breaks = FeatureBreaks(sides["own"].density, sides["other"].density)
        counts = ", ".join(f"{k} {v}" for k, v in breaks.counts().items())
        print(
            f"\nfeatures of {case.sae} from {own.id} (own) to {case.id} (other): {counts} (shifted: {SHIFT:g}x or more)"
        )
        supported, median = FeatureShift(sides["own"].summary, sides["other"].summary).median()
        if median is not None:
            print(
                f"latent scaling: median ν {median:.3g} over the {supported} features firing on {MIN_FIRINGS}+ "
                "positions of each model"
            )
        for by, ranking in RANKINGS.items():
            print(f"\nthe {args.top} features that moved most by {ranking}:")
            write_table(feature_table(sides["own"], sides["other"], by, args.top), args.format)
    return EXIT_OK


def _side(executor: CaseExecutor, case, report) -> FeatureSide:
    """The case's features (its explained pass: `report`, or one run now) with its rows and its tokenizer."""
    report = report or executor.explain(case)
    return executor.side(case, report.feature_density, report.features)
