"""The `metrics` and `versions` commands: what the suite measures and what its numbers depend on."""

from __future__ import annotations

import argparse
from importlib.metadata import version

from sae_bench.cases.registry import METRIC_GROUPS
from sae_bench.engine.definitions import DEFINITIONS, EXPLANATIONS


def metrics(_: argparse.Namespace) -> int:
    """Every metric of every group (and the report's derived fields), with its definition's version and formula."""
    grouped = {name for names in METRIC_GROUPS.values() for name in names} | set(EXPLANATIONS)
    groups = {
        **METRIC_GROUPS,
        "explanations (sae-bench explain, --explain; recorded, never judged)": EXPLANATIONS,
        "counts and derived report fields": tuple(n for n in DEFINITIONS if n not in grouped),
    }
    width = max(len(name) for name in DEFINITIONS)
    for group, names in groups.items():
        print(f"[{group}]")
        for name in names:
            entry = DEFINITIONS[name]
            print(f"  {name:<{width}}  v{entry.version}  {entry.formula}")
            for former, said in sorted(entry.earlier.items()):
                print(f"  {'':<{width}}  (v{former}: {said})")
    return 0


def versions(_: argparse.Namespace) -> int:
    for package in ("sae-transfer-bench", "sae-lens", "transformer-lens", "torch"):
        print(f"{package} {version(package)}")
    return 0
