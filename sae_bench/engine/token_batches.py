"""Token batches: one materialised (n_sequences, pos) tensor and its position mask, cut into batches.

The same tensors feed every model of a case, so paired metrics compare identical tokens (docs/design.md §5).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from sae_lens.util import get_special_token_ids
from torch import Tensor

from sae_bench.engine.backends import Model, backend_of
from sae_bench.errors import BadInput


@dataclass(frozen=True)
class TokenBatch:
    """One batch: tokens and position mask, both (batch, pos), and the index of its first sequence."""

    tokens: Tensor
    position_mask: Tensor
    offset: int


def check_token_ids(tokens: Tensor, d_vocab: int) -> None:
    """Raise naming the first ids outside [0, d_vocab) and where they are (an embedding lookup would fail deep in
    torch with an IndexError, or read another row on some devices)."""
    bad = (tokens < 0) | (tokens >= d_vocab)
    if bool(bad.any()):
        where = bad.nonzero()[:5].tolist()
        ids = sorted({int(tokens[s, p]) for s, p in where})
        raise BadInput(
            f"{int(bad.sum())} token ids lie outside the model's vocabulary [0, {d_vocab}): ids {ids} first at "
            f"(sequence, position) {[tuple(w) for w in where]}. The tokens were made with another tokenizer, or "
            "the model's vocabulary was cut (a `vocab=N` spec)."
        )


class TokenBatches:
    """Iterate (tokens, position_mask) in batches of `batch_size` sequences, in order. causal: the batches are for
    a causal model, so each is cut after the token that follows its last evaluated position (`_width_read`)."""

    def __init__(self, tokens: Tensor, position_mask: Tensor | None, batch_size: int, *, causal: bool = False) -> None:
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise BadInput(
                f"tokens must be an integer tensor of shape (n_sequences, pos), got {tuple(tokens.shape)} "
                f"{tokens.dtype}"
            )
        if tokens.shape[0] == 0 or tokens.shape[1] < 2:
            raise BadInput(f"tokens must hold at least one sequence of at least 2 positions, got {tuple(tokens.shape)}")
        if position_mask is None:
            position_mask = torch.ones_like(tokens, dtype=torch.bool)
        if position_mask.shape != tokens.shape:
            raise BadInput(
                f"position_mask has shape {tuple(position_mask.shape)} but tokens have {tuple(tokens.shape)}"
            )
        if batch_size < 1:
            raise BadInput(f"batch_size must be >= 1, got {batch_size}")
        self.tokens = tokens.long()
        self.position_mask = position_mask.bool()
        self.batch_size = batch_size
        self.causal = causal

    def __len__(self) -> int:
        return -(-self.tokens.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[TokenBatch]:
        for start in range(0, self.tokens.shape[0], self.batch_size):
            stop = start + self.batch_size
            mask = self.position_mask[start:stop]
            width = _width_read(mask) if self.causal else mask.shape[1]
            yield TokenBatch(self.tokens[start:stop, :width], mask[:, :width], start)


def _width_read(mask: Tensor) -> int:
    """Positions a causal model must run for a batch: up to the last evaluated one and the token after it (its
    target). No later position changes an earlier one, so the rest is never run (a chat row's padding, the text
    after a user prompt)."""
    evaluated = mask.any(dim=0).nonzero()
    last = int(evaluated.max()) if evaluated.numel() else 0
    return min(mask.shape[1], last + 2)


def special_token_ids(model: Model, given: tuple[int, ...] | None) -> Tensor:
    """The special-token ids to exclude: `given`, or every special id of the model's tokenizer (as SAELens)."""
    if given is not None:
        return torch.tensor(given, dtype=torch.long)
    tokenizer = backend_of(model).tokenizer
    if tokenizer is None:
        raise BadInput(
            "exclude_special_tokens needs the special-token ids: the model has no tokenizer, so pass "
            "`special_token_ids`"
        )
    return torch.tensor(sorted(get_special_token_ids(tokenizer)), dtype=torch.long)
