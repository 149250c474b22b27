"""An SAE loaded once and checked: its weights finite (else UnusableSAE, naming its spec) and, on first use, the
sha256 of its weights (which SAE a verdict is about). The gate validates a new SAE as one and hands it to the suite,
whose executor keeps it instead of loading it again; the executor loads every other SAE as one too."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import torch
from sae_lens import SAE

from sae_bench.cases.registry import Case
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


def sae_fit_problem(sae, case: Case, d_model: int | None = None) -> str | None:
    """Why `sae` cannot stand in `case` (another hook than its config names, unless the case allows it with a
    reason; another input width than the model's), or None."""
    hook = getattr(sae.cfg.metadata, "hook_name", None)
    if hook and hook != case.hook and not case.hook_mismatch_ok:
        return (
            f"its config says it reads {hook}, but case {case.id} splices it at {case.hook}. Use an SAE trained "
            f'at {case.hook}, or set hook_mismatch_ok = "why" in the case ({case.file}) if this is meant'
        )
    if d_model is not None and sae.cfg.d_in != d_model:
        return f"it reads d_in={sae.cfg.d_in} activations, but the model of case {case.id} has d_model={d_model}"
    return None
