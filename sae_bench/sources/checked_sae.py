"""An SAE loaded once and checked: its weights finite (else UnusableSAE, naming its spec) and, on first use, the
sha256 of its weights (which SAE a verdict is about). The gate validates a new SAE as one and hands it to the suite,
whose executor keeps it instead of loading it again; the executor loads every other SAE as one too."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import torch
from sae_lens import SAE

from sae_bench.engine.evaluate import non_finite_weights
from sae_bench.errors import UnusableSAE
from sae_bench.sources.loading import load_sae

LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError)
"""What a load that cannot succeed raises (a missing or malformed folder, an unknown release, bad weights)."""


@dataclass(frozen=True, eq=False)
class CheckedSae:
    """An SAE with finite weights, and the spec that named it."""

    spec: str
    sae: SAE

    @cached_property
    def sha256(self) -> str:
        """sha256 over its weights (`weights_sha256`), computed once."""
        return weights_sha256(self.sae)


def check_sae(spec: str, *, device: str = "cpu") -> CheckedSae:
    """Load the SAE of `spec` and check its weights are finite; UnusableSAE (naming the spec, the load error as its
    cause) otherwise."""
    try:
        sae = load_sae(spec, device=device)
    except LOAD_ERRORS as err:
        raise UnusableSAE(f"cannot be loaded ({err})", spec=spec) from err
    if any(not bool(torch.isfinite(p).all()) for p in sae.parameters()):
        raise UnusableSAE(non_finite_weights(sae), spec=spec)
    return CheckedSae(spec, sae)


def weights_sha256(sae) -> str:
    """sha256 over an SAE's weights (names and float32 bytes, in name order): which SAE a verdict is about."""
    digest = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
