"""Where the shipped zoo lives and how its files are checked: every file's sha256 is in `manifest.json`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sae_bench.errors import BadInput
from sae_bench.shipped import shipped

ZOO_ENV = "SAE_BENCH_ZOO"
MANIFEST = "manifest.json"


class ZooArtifactError(BadInput):
    """A zoo file is missing, unlisted or not the file the manifest describes."""


def zoo_root() -> Path:
    """The zoo folder: `$SAE_BENCH_ZOO`, else the shipped zoo (the checkout's zoo/, or the installed copy)."""
    configured = os.environ.get(ZOO_ENV)
    return Path(configured) if configured else shipped("zoo")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path | None = None) -> dict[str, Any]:
    root = zoo_root() if root is None else root
    path = root / MANIFEST
    if not path.is_file():
        raise ZooArtifactError(
            f"no zoo manifest at {path}: the zoo ships with the package (the repository's zoo/ folder) "
            f"(set {ZOO_ENV} to point elsewhere, or rebuild it with `sae-bench zoo build`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ZooArtifactError(
            f"the zoo manifest {path} is damaged ({err}); restore it with `git checkout -- zoo/manifest.json` or "
            "rebuild the zoo with `sae-bench zoo build`"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ZooArtifactError(f"the zoo manifest {path} lists no files; restore it with `git checkout -- zoo/`")
    return manifest


def verified_directory(relative: str, root: Path | None = None) -> Path:
    """The zoo directory `relative`, after checking each of its files against the manifest's sha256: a file the
    manifest does not list is refused too (it would load unchecked)."""
    root = zoo_root() if root is None else root
    files = read_manifest(root)["files"]
    prefix = relative.rstrip("/") + "/"
    listed = {name: digest for name, digest in files.items() if name.startswith(prefix)}
    if not listed:
        raise ZooArtifactError(f"the zoo manifest lists no files under {relative!r}")
    present = (root / relative).rglob("*") if (root / relative).is_dir() else ()
    unlisted = sorted(p.relative_to(root).as_posix() for p in present if p.is_file())
    unlisted = [name for name in unlisted if name not in listed]
    if unlisted:
        raise ZooArtifactError(
            f"zoo file {unlisted[0]} is not in the manifest ({root / MANIFEST}), so it cannot be verified"
            f"{f' (and {len(unlisted) - 1} more)' if len(unlisted) > 1 else ''}; restore the manifest with "
            "`git checkout -- zoo/` or rebuild the zoo with `sae-bench zoo build`"
        )
    for name, expected in sorted(listed.items()):
        path = root / name
        if not path.is_file():
            raise ZooArtifactError(f"zoo file {name} is listed in the manifest but missing from {root}")
        actual = sha256_file(path)
        if actual != expected:
            raise ZooArtifactError(
                f"zoo file {name} does not match the manifest: sha256 {actual[:12]}…, expected {expected[:12]}…; "
                "restore it with `git checkout -- zoo/` or rebuild it with `sae-bench zoo build`"
            )
    return root / relative


def list_files(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` except the manifest and the card, by path relative to `root`."""
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in (MANIFEST, "CARD.md")
    }
