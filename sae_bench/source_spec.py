"""A source as case files, `--sae` and the gates name it: `SCHEME:BODY[?KEY=VALUE&…]` (zoo:, hf:, saelens:,
wandb:, alpaca:, unreleased:) or a local folder. Parsed once per distinct text (`source_spec`), used wherever a
source is named; the hub tier's loaders (`sae_bench.sources.hub`) say what each scheme's body means."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from sae_bench.errors import BadInput

SCHEMES = ("zoo", "hf", "saelens", "wandb", "alpaca", "unreleased")
"""The schemes the suite loads; any other `NAME:` prefix is an unknown scheme, said as such where it is loaded."""
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):(.+)$", re.S)


@dataclass(frozen=True)
class SourceSpec:
    """One parsed source: its scheme ("" for a local folder), body and query parameters."""

    text: str
    scheme: str
    body: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """A local folder (no scheme)."""
        return not self.scheme

    @property
    def tier(self) -> str:
        """ "zoo" for the shipped zoo, else "hub" (a hub source, or a folder the user brings)."""
        return "zoo" if self.scheme == "zoo" else "hub"

    @property
    def zoo_family(self) -> str | None:
        """The zoo family a `zoo:FAMILY/NAME` spec names; None for any other."""
        return self.body.split("/")[0] if self.scheme == "zoo" else None


@functools.cache
def source_spec(text: str) -> SourceSpec:
    """`text` parsed; a text without a `scheme:` prefix is a local folder."""
    match = _SCHEME.match(text)
    if not match:
        return SourceSpec(text, "", text)
    body, _, query = match.group(2).partition("?")
    return SourceSpec(text, match.group(1), body, {k: v[-1] for k, v in parse_qs(query).items()})


def parse_spec(text: str) -> SourceSpec:
    """`text` parsed, where a hub source is expected: BadInput when it names no scheme."""
    spec = source_spec(text)
    if spec.is_local:
        raise BadInput(f"source spec {text!r} has no scheme; write zoo:, hf:, saelens:, wandb: or alpaca:")
    return spec
