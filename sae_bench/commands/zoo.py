"""The `zoo` commands: build, list and describe the shipped zoo."""

from __future__ import annotations

import argparse

from sae_bench.errors import BadInput
from sae_bench.shipped import in_checkout
from sae_bench.sources.zoo.artifacts import zoo_root
from sae_bench.sources.zoo.recipes import model_names, sae_names
from sae_bench.tooling.zoo_build.build import build
from sae_bench.tooling.zoo_build.card import write_card


def build_command(args: argparse.Namespace) -> int:
    if args.root is None and not in_checkout():  # never into the installed package
        raise BadInput("zoo build: pass --root DIR (an installed suite's zoo is part of the package)")
    build(zoo_root() if args.root is None else args.root, only=args.only)
    return 0


def list_zoo(_: argparse.Namespace) -> int:
    for name in model_names() + sae_names():
        print(f"zoo:{name}")
    return 0


def card(args: argparse.Namespace) -> int:
    path = write_card(tokens=args.tokens)
    print(f"wrote {path}")
    return 0
