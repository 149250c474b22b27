"""The `expectations` commands: write the hub cases' expectation files from the published results."""

from __future__ import annotations

import argparse

from sae_bench.cases.registry import expectation_path
from sae_bench.errors import BadInput
from sae_bench.expectations.published import published_expectations
from sae_bench.shipped import in_checkout, shipped


def published(args: argparse.Namespace) -> int:
    if args.root is None:
        if not in_checkout():  # an installed suite never writes into its own package or the current folder
            raise BadInput("expectations published: pass --root DIR, the folder to write the files into")
        args.root = shipped("expectations")
    if args.root.exists() and not args.root.is_dir():
        raise BadInput(f"expectations published --root {args.root} is a file; give a folder")

    for expected in published_expectations():
        path = expectation_path(args.root, expected.case)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expected.to_json())
        print(f"wrote {path}")
    return 0
