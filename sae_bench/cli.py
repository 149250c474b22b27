"""`sae-bench`: the command-line entry point."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from pathlib import Path


def _print_metrics(_: argparse.Namespace) -> int:
    from sae_bench.results import TransferReport

    docs = TransferReport.metric_docs()
    width = max(map(len, docs))
    for name, doc in docs.items():
        print(f"{name:<{width}}  {doc}")
    return 0


def _print_versions(_: argparse.Namespace) -> int:
    for package in ("sae-transfer-bench", "sae-lens", "transformer-lens", "torch"):
        print(f"{package} {version(package)}")
    return 0


def _zoo_build(args: argparse.Namespace) -> int:
    from sae_bench.zoo.artifacts import zoo_root
    from sae_bench.zoo.build import build

    build(zoo_root() if args.root is None else args.root, only=args.only)
    return 0


def _zoo_list(_: argparse.Namespace) -> int:
    from sae_bench.zoo.recipes import model_names, sae_names

    for name in model_names() + sae_names():
        print(f"zoo:{name}")
    return 0


def _zoo_card(args: argparse.Namespace) -> int:
    from sae_bench.zoo.card import write_card

    path = write_card(tokens=args.tokens)
    print(f"wrote {path}")
    return 0


def _add_zoo_commands(commands) -> None:
    zoo = commands.add_parser("zoo", help="the shipped zoo of small model pairs and their SAEs").add_subparsers(
        dest="zoo_command", required=True
    )
    build = zoo.add_parser("build", help="retrain the zoo (deterministic; about 25 minutes on 2 CPU cores)")
    build.add_argument(
        "--only", help="rebuild one family (tiny-mistral), one artifact (tiny-mistral/base-sae), all saes, or data"
    )
    build.add_argument("--root", type=Path, help="build into this folder instead of the shipped zoo/")
    build.set_defaults(run=_zoo_build)
    zoo.add_parser("list", help="every zoo model and SAE, as a source spec").set_defaults(run=_zoo_list)
    card = zoo.add_parser("card", help="measure the shipped zoo and rewrite zoo/CARD.md")
    card.add_argument("--tokens", type=int, default=32768, help="held-out tokens per measurement")
    card.set_defaults(run=_zoo_card)


def _write_published(args: argparse.Namespace) -> int:
    from sae_bench.cases import expectation_path
    from sae_bench.published import published_expectations

    for expected in published_expectations():
        path = expectation_path(args.root, expected.case)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expected.to_json())
        print(f"wrote {path}")
    return 0


def _gate(args: argparse.Namespace) -> int:
    if args.rehearse:  # before anything imports huggingface_hub, which reads its settings once
        from sae_bench.rehearsal import activate

        activate(extra_saes=[args.sae])
    from sae_bench.gate import run_gate

    return run_gate(args.sae, args.cases, junit=args.junit, table=args.table, rehearse=args.rehearse)


def _add_gate_command(commands) -> None:
    gate = commands.add_parser(
        "gate",
        help="check a new SAE release against the expectations of the cases it replaces (exit 0 ok, 1 regression, "
        "2 bad input)",
    )
    gate.add_argument("--sae", required=True, help="the new SAE: saelens:RELEASE/ID, hf:, wandb:, zoo:, or a folder")
    gate.add_argument("--cases", required=True, help="pytest -k expression selecting the cases whose SAE it replaces")
    gate.add_argument("--junit", metavar="FILE", help="write JUnit XML here")
    gate.add_argument("--table", metavar="FILE", help="write the verdict table here (.md or .csv)")
    gate.add_argument(
        "--rehearse",
        action="store_true",
        help="dry-run offline on the hub stand-ins: exit 0 when every selected case ran end to end with the SAE "
        "(verdicts go to --table but, on miniatures, do not set the exit code)",
    )
    gate.set_defaults(run=_gate)


def _add_expectation_commands(commands) -> None:
    group = commands.add_parser("expectations", help="expectation files").add_subparsers(
        dest="expectations_command", required=True
    )
    published = group.add_parser("published", help="write the hub cases' expectations from the published results")
    published.add_argument("--root", type=Path, default=Path("expectations"), help="expectations folder")
    published.set_defaults(run=_write_published)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-bench", description="Does an SAE still work when spliced into a model it was not trained on?"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("metrics", help="list every reported metric with its definition").set_defaults(
        run=_print_metrics
    )
    commands.add_parser("versions", help="print the versions the numbers depend on").set_defaults(run=_print_versions)
    _add_zoo_commands(commands)
    _add_expectation_commands(commands)
    _add_gate_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
