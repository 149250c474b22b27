"""Splicing an SAE into a TransformerLens model at a residual hook, under a position mask.

The model is cut at the hook: `run_to_hook` runs the blocks before it once, `final_residual_from_hook` runs the
rest from any residual (clean, spliced or zero-ablated), so the shared prefix is never recomputed
(docs/design.md §5), and
`logits_of_final_rows` unembeds only the predictions that are scored. Each runs the model through its backend
(`sae_bench.engine.backends`: HookedTransformer, or a TransformerBridge cut on the HF model it runs).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from sae_lens import SAE
from torch import Tensor

from sae_bench.engine.backends import Model, backend_of
from sae_bench.errors import BadInput

_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


@dataclass(frozen=True)
class HookSite:
    """A residual-stream hook and where it cuts the model."""

    name: str
    layer: int
    kind: Literal["pre", "post"]

    @classmethod
    def parse(cls, name: str) -> HookSite | None:
        """The site a residual-stream hook name names, read off the name alone (None: not such a name)."""
        match = _RESID_HOOK.match(name)
        return None if match is None else cls(name, int(match.group(1)), match.group(2))  # type: ignore[arg-type]

    @property
    def blocks_before(self) -> int:
        """Blocks that run before the hook: L for blocks.L.hook_resid_pre, L + 1 for blocks.L.hook_resid_post."""
        return self.layer if self.kind == "pre" else self.layer + 1


def supported_hooks(model: Model) -> list[str]:
    """Every hook name `resolve_hook` accepts on this model."""
    return backend_of(model).residual_hooks()


def resolve_hook(model: Model, hook_name: str) -> HookSite:
    """Parse and check a hook name; an unknown or unsupported one raises with the valid names and close matches."""
    valid = supported_hooks(model)
    n_layers = backend_of(model).n_layers
    site = HookSite.parse(hook_name)
    if site is None or hook_name not in valid:
        close = difflib.get_close_matches(hook_name, valid, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        kind = "is not a residual-stream hook" if hook_name in model.hook_dict else "does not exist"
        raise BadInput(
            f"hook {hook_name!r} {kind} on this {n_layers}-layer model.{hint} Valid hooks: "
            f"blocks.0.hook_resid_pre … blocks.{n_layers - 1}.hook_resid_post "
            f"(blocks.<layer>.hook_resid_pre or blocks.<layer>.hook_resid_post)."
        )
    return site


class SAEDoesNotFit(ValueError):
    """The SAE's input width is not the model's residual width at the hook."""


def check_sae_fits(model: Model, sae: SAE, site: HookSite) -> None:
    """Raise if the SAE's input width is not the model's residual width."""
    d_in, d_model = sae.cfg.d_in, backend_of(model).d_model
    if d_in != d_model:
        raise SAEDoesNotFit(
            f"the SAE reads d_in={d_in} activations but {site.name} has d_model={d_model}: this SAE was not "
            "trained on a model of this width"
        )


TOKENS_PER_CALL = {"cpu": 1 << 11, "cuda": 1 << 15}
"""Tokens one model call runs. Rows are independent, so a batch runs in pieces: on CPU small calls keep the
attention scores and MLP activations in cache (1.8× faster than one call of 352 rows of 128 on the zoo); on a GPU
larger calls keep it busy while bounding its memory."""


def rows_per_call(model: Model, pos: int) -> int:
    """How many rows of `pos` tokens one call of `model` runs (TOKENS_PER_CALL of its device, at least one)."""
    kind = "cuda" if backend_of(model).device.type == "cuda" else "cpu"
    return max(1, TOKENS_PER_CALL[kind] // pos)


def _in_pieces(model: Model, run: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """run(rows) in as few calls of at most `rows_per_call` rows as may be, of equal sizes (the same result: rows do
    not interact). Equal, because a call's fixed cost is large on a small model: 17 rows as 16 + 1 took 1.3× the
    time of 9 + 8 on the zoo (one call of one 128-token row through two blocks: 7 ms)."""
    step = rows_per_call(model, rows.shape[1])
    if rows.shape[0] <= step:
        return run(rows)
    return torch.cat([run(piece) for piece in rows.tensor_split(-(-rows.shape[0] // step))])


def is_causal(model: Model) -> bool:
    """Whether no position reads a later one (decoder LMs), so a row may be cut after the last position needed."""
    return backend_of(model).is_causal


def run_to_hook(model: Model, tokens: Tensor, site: HookSite) -> Tensor:
    """Residual stream at the hook. tokens: (batch, pos) → (batch, pos, d_model)."""
    backend = backend_of(model)
    return _in_pieces(model, lambda piece: backend.run_to_hook(piece, site.blocks_before), tokens)


def run_keeping_hooks(model: Model, tokens: Tensor, sites: Sequence[HookSite]) -> tuple[dict[HookSite, Tensor], Tensor]:
    """One forward through every block, keeping the residual at each site: (residual at each hook, residual after
    the last block), each (batch, pos, d_model). Each kept residual is the one `run_to_hook` gives (the same
    operations, stopped later), so every hook's prefix comes with the clean run."""
    backend = backend_of(model)
    kept_pieces: dict[HookSite, list[Tensor]] = {site: [] for site in sites}
    finals = []
    for piece in tokens.split(rows_per_call(model, tokens.shape[1])):
        by_blocks, final = backend.run_keeping(piece, [site.blocks_before for site in sites])
        finals.append(final)
        for site in sites:
            kept_pieces[site].append(by_blocks[site.blocks_before])
    return {site: torch.cat(pieces) for site, pieces in kept_pieces.items()}, torch.cat(finals)


def final_residual_from_hook(model: Model, residual: Tensor, site: HookSite) -> Tensor:
    """The residual after the last block (before the final norm), from a residual at the hook. (batch, pos, d)."""
    backend = backend_of(model)
    return _in_pieces(model, lambda piece: backend.final_residual_from(piece, site.blocks_before), residual)


def logits_of_final_rows(model: Model, rows: Tensor) -> Tensor:
    """Logits of (n, d_model) final-residual rows: final norm, unembedding and soft cap, as the model's forward
    applies them. Scoring only chosen rows, a chunk at a time, keeps memory at O(chunk × d_vocab)."""
    return backend_of(model).logits_of_final_rows(rows)


def unembedding(model: Model) -> Tensor:
    """The (d_model, d_vocab) map from the normalised final residual to logits, the final norm's scale folded in
    (HookedTransformer's W_U; a bridge's is folded here the same way), for logit-weight similarity."""
    return backend_of(model).unembedding()


class SaePass(NamedTuple):
    """One SAE pass over a set of tokens, in the SAE's input space."""

    sae_in: Tensor
    """x·scale (or x), (tokens, d_model), in the SAE's dtype and device."""
    feature_acts: Tensor
    """(tokens, d_sae)."""
    x_hat: Tensor
    """Reconstruction of sae_in, (tokens, d_model)."""


def sae_input(sae: SAE, x: Tensor, scale: float | None) -> Tensor:
    """x (tokens, d_model) on the SAE's device and dtype, multiplied by `scale` first when one is given."""
    sae_in = x.to(device=sae.device, dtype=sae.dtype)
    return sae_in if scale is None else sae_in * scale


def encode_decode(sae: SAE, x: Tensor, scale: float | None) -> SaePass:
    """Run the SAE on x (tokens, d_model), multiplied by `scale` first when one is given."""
    sae_in = sae_input(sae, x, scale)
    feature_acts = sae.encode(sae_in)
    return SaePass(sae_in, feature_acts, sae.decode(feature_acts))


def spliced_residual(x: Tensor, positions: Tensor, x_hat_scaled: Tensor, scale: float | None) -> Tensor:
    """x with the positions under `positions` replaced by the SAE reconstruction, back in the model's units.

    x: (batch, pos, d_model); positions: (batch, pos) bool; x_hat_scaled: (positions.sum(), d_model).
    """
    x_hat = x_hat_scaled if scale is None else x_hat_scaled / scale
    spliced = x.clone()
    spliced[positions] = x_hat.to(device=x.device, dtype=x.dtype)
    return spliced


def zero_ablated_residual(x: Tensor, positions: Tensor) -> Tensor:
    """x with zeros at the positions under `positions`. x: (batch, pos, d_model); positions: (batch, pos)."""
    return x.masked_fill(positions.unsqueeze(-1), 0.0)
