"""The `metrics` and `versions` commands: what the suite measures and what its numbers depend on."""

from __future__ import annotations

import argparse
from importlib.metadata import version

from sae_bench.cases.registry import METRIC_GROUPS
from sae_bench.engine.outliers import OUTLIER_METRIC_DOCS
from sae_bench.engine.transfer_report import TransferReport
from sae_bench.engine.universality import PAIRED_METRIC_DOCS


def metrics(_: argparse.Namespace) -> int:
    """Every metric of every group, with its definition (each kept where the metric is computed)."""
    docs = TransferReport.metric_docs() | OUTLIER_METRIC_DOCS | PAIRED_METRIC_DOCS
    width = max(len(name) for names in METRIC_GROUPS.values() for name in names)
    for group, names in METRIC_GROUPS.items():
        print(f"[{group}]")
        for name in names:
            print(f"  {name:<{width}}  {docs[name]}")
    return 0


def versions(_: argparse.Namespace) -> int:
    for package in ("sae-transfer-bench", "sae-lens", "transformer-lens", "torch"):
        print(f"{package} {version(package)}")
    return 0
