"""The `expectations` commands: write the hub cases' expectation files from the published results; migrate files
written before definition versions (format 1) to format 2, in place, with no value changed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sae_bench.cases.registry import expectation_path
from sae_bench.errors import BadInput
from sae_bench.expectations.files import locked, write_atomic
from sae_bench.expectations.published import published_expectations
from sae_bench.expectations.rules import bundle_json, is_bundle, is_legacy, read_bundle, read_expectations
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


def migrate(args: argparse.Namespace) -> int:
    """Rewrite every format-1 expectation file under the given folders (or files) as format 2: each value gains
    `version: 1`, the definition every value had before versions existed; nothing else changes. A file that does
    not parse is reported and left as it is; so is every file, if one does not parse (all or nothing)."""
    paths = args.paths or ([shipped("expectations")] if in_checkout() else [])
    if not paths:
        raise BadInput("expectations migrate: name the expectation folders or files to migrate")
    files = []
    for path in paths:
        if not path.exists():
            raise BadInput(f"expectations migrate: {path} does not exist")
        files += sorted(path.rglob("*.json")) if path.is_dir() else [path]
    legacy = [path for path in files if is_legacy(path)]
    rewritten = {path: _format_2(path) for path in legacy}  # every file parsed before any is written
    for path, text in rewritten.items():
        with locked(path):
            write_atomic(path, text)
        print(f"migrated {path}")
    print(f"{len(legacy)} of {len(files)} expectation files migrated to format 2; the others already were")
    return 0


def _format_2(path: Path) -> str:
    data = json.loads(path.read_text())
    if is_bundle(data):
        return bundle_json(data["sweep"], read_bundle(path))
    return read_expectations(path).to_json()
