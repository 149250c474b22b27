"""The residual at a hook for every batch of a token set, computed once and handed to each pass that needs it (the
mean-norm threshold, the shared transfer pass, the paired pass), so a token set's prefix runs once (docs/design.md §5).

The batches are kept in host memory, where a GPU run has room for them and its own memory stays with the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sae_bench.engine.backends import Model, backend_of
from sae_bench.engine.splicing import HookSite, is_causal, resolve_hook, run_to_hook
from sae_bench.engine.token_batches import TokenBatches, check_token_ids

PREFIX_CACHE_BYTES = 4 << 30
"""Largest prefix kept by default (4 GiB: 256k tokens of a 4096-wide model in float32); a larger one is recomputed
by each pass."""


@dataclass(frozen=True)
class PrefixActivations:
    """Residual at `hook` for each batch of `batch_size` rows of one token set: (batch, pos, d_model) each, on CPU."""

    hook: str
    batch_size: int
    batches: list[Tensor]

    def check_serves(self, hook: str, batches: TokenBatches) -> None:
        """Raise unless these are the activations of exactly these batches at this hook."""
        shapes = [tuple(b.tokens.shape) for b in batches]
        mine = [tuple(x.shape[:2]) for x in self.batches]
        if self.hook != hook or self.batch_size != batches.batch_size or mine != shapes:
            raise ValueError(
                f"the given prefix activations (hook {self.hook}, batch size {self.batch_size}, {len(mine)} batches) "
                f"are not those of this pass (hook {hook}, batch size {batches.batch_size}, {len(shapes)} batches)"
            )


def prefix_bytes(model: Model, tokens: Tensor) -> int:
    """Host memory the prefix activations of `tokens` take, in the model's dtype."""
    backend = backend_of(model)
    return tokens.numel() * backend.d_model * torch.empty((), dtype=backend.dtype).element_size()


@torch.inference_mode()
def run_prefix(
    model: Model, tokens: Tensor, hook: str, batch_size: int, position_mask: Tensor | None = None
) -> PrefixActivations:
    """Run `model` to `hook` over `tokens` (n_sequences, pos), `batch_size` rows at a time, keeping each batch
    (cut as the passes it serves cut it: after the last position under `position_mask` that they read)."""
    site = resolve_hook(model, hook)
    batches = TokenBatches(tokens, position_mask, batch_size, causal=is_causal(model))
    check_token_ids(batches.tokens, backend_of(model).d_vocab)
    return PrefixActivations(
        site.name,
        batch_size,
        [run_to_hook(model, batch.tokens.to(backend_of(model).device), site).cpu() for batch in batches],
    )


def residual_at_hook(
    model: Model,
    tokens: Tensor,
    site: HookSite,
    prefix: PrefixActivations | None,
    index: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """The residual at the hook for batch `index` (tokens: that batch), on `device` (default the model's): taken
    from `prefix` when given, else run."""
    device = device or backend_of(model).device
    return run_to_hook(model, tokens.to(device), site) if prefix is None else prefix.batches[index].to(device)
