"""`sae-bench`: the command-line entry point."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

from sae_bench.results import TransferReport


def _print_metrics(_: argparse.Namespace) -> int:
    docs = TransferReport.metric_docs()
    width = max(map(len, docs))
    for name, doc in docs.items():
        print(f"{name:<{width}}  {doc}")
    return 0


def _print_versions(_: argparse.Namespace) -> int:
    for package in ("sae-transfer-bench", "sae-lens", "transformer-lens", "torch"):
        print(f"{package} {version(package)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-bench", description="Does an SAE still work when spliced into a model it was not trained on?"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("metrics", help="list every reported metric with its definition").set_defaults(
        run=_print_metrics
    )
    commands.add_parser("versions", help="print the versions the numbers depend on").set_defaults(run=_print_versions)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
