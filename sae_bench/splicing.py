"""Splicing an SAE into a TransformerLens model at a residual hook, under a position mask.

The model is cut at the hook: `run_to_hook` runs the blocks before it once, `final_residual_from_hook` runs the
rest from any residual (clean, spliced or zero-ablated), so the shared prefix is never recomputed (DESIGN §5), and
`logits_of_final_rows` unembeds only the predictions that are scored. A TransformerBridge (`--backend bridge`)
is cut the same way on the HF model it runs (`sae_bench.hf_continuation`); these four functions are the only places
the engine runs a model, so they are where the backends differ.
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
from transformer_lens import HookedTransformer
from transformer_lens.utilities.activation_functions import apply_softcap

from sae_bench import hf_continuation
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


def supported_hooks(model: HookedTransformer) -> list[str]:
    """Every hook name `resolve_hook` accepts on this model."""
    return [f"blocks.{i}.hook_resid_{kind}" for i in range(model.cfg.n_layers) for kind in ("pre", "post")]


def resolve_hook(model: HookedTransformer, hook_name: str) -> HookSite:
    """Parse and check a hook name; an unknown or unsupported one raises with the valid names and close matches."""
    valid = supported_hooks(model)
    site = HookSite.parse(hook_name)
    if site is None or hook_name not in valid:
        close = difflib.get_close_matches(hook_name, valid, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        kind = "is not a residual-stream hook" if hook_name in model.hook_dict else "does not exist"
        raise BadInput(
            f"hook {hook_name!r} {kind} on this {model.cfg.n_layers}-layer model.{hint} Valid hooks: "
            f"blocks.0.hook_resid_pre … blocks.{model.cfg.n_layers - 1}.hook_resid_post "
            f"(blocks.<layer>.hook_resid_pre or blocks.<layer>.hook_resid_post)."
        )
    return site


class SAEDoesNotFit(ValueError):
    """The SAE's input width is not the model's residual width at the hook."""


def check_sae_fits(model: HookedTransformer, sae: SAE, site: HookSite) -> None:
    """Raise if the SAE's input width is not the model's residual width."""
    d_in, d_model = sae.cfg.d_in, model.cfg.d_model
    if d_in != d_model:
        raise SAEDoesNotFit(
            f"the SAE reads d_in={d_in} activations but {site.name} has d_model={d_model}: this SAE was not "
            "trained on a model of this width"
        )


TOKENS_PER_CALL = {"cpu": 1 << 11, "cuda": 1 << 15}
"""Tokens one model call runs. Rows are independent, so a batch runs in pieces: on CPU small calls keep the
attention scores and MLP activations in cache (1.8× faster than one call of 352 rows of 128 on the zoo); on a GPU
larger calls keep it busy while bounding its memory."""


def rows_per_call(model: HookedTransformer, pos: int) -> int:
    """How many rows of `pos` tokens one call of `model` runs (TOKENS_PER_CALL of its device, at least one)."""
    device = model.cfg.device
    kind = "cuda" if device is not None and torch.device(device).type == "cuda" else "cpu"
    return max(1, TOKENS_PER_CALL[kind] // pos)


def _in_pieces(model: HookedTransformer, run: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """run(rows) with the rows taken `rows_per_call` at a time (the same result: rows do not interact)."""
    step = rows_per_call(model, rows.shape[1])
    if rows.shape[0] <= step:
        return run(rows)
    return torch.cat([run(piece) for piece in rows.split(step)])


def is_causal(model: HookedTransformer) -> bool:
    """Whether no position reads a later one (decoder LMs), so a row may be cut after the last position needed."""
    return model.cfg.attention_dir == "causal"


def bridged_model(model):
    """The HF causal LM a TransformerBridge runs, which `sae_bench.hf_continuation` runs to and from a hook (None
    for a HookedTransformer, which does both itself)."""
    return getattr(model, "original_model", None)


def run_to_hook(model: HookedTransformer, tokens: Tensor, site: HookSite) -> Tensor:
    """Residual stream at the hook. tokens: (batch, pos) → (batch, pos, d_model)."""
    hf = bridged_model(model)
    if hf is not None:
        return _in_pieces(model, lambda piece: hf_continuation.run_to_hook(hf, piece, site.blocks_before), tokens)
    return _in_pieces(model, lambda piece: model(piece, stop_at_layer=site.blocks_before), tokens)


def run_keeping_hooks(
    model: HookedTransformer, tokens: Tensor, sites: Sequence[HookSite]
) -> tuple[dict[HookSite, Tensor], Tensor]:
    """One forward through every block, keeping the residual at each site: (residual at each hook, residual after
    the last block), each (batch, pos, d_model). Each kept residual is the one `run_to_hook` gives (the same
    operations, stopped later), so every hook's prefix comes with the clean run."""
    step = rows_per_call(model, tokens.shape[1])
    kept_pieces: dict[HookSite, list[Tensor]] = {site: [] for site in sites}
    finals = []
    kept: dict[str, Tensor] = {}

    def keep(tensor: Tensor, hook) -> None:
        kept[hook.name] = tensor

    hooks = [(name, keep) for name in dict.fromkeys(site.name for site in sites)]
    hf = bridged_model(model)
    for piece in tokens.split(step):
        if hf is not None:
            by_blocks, final = hf_continuation.run_keeping(hf, piece, [site.blocks_before for site in sites])
            kept.update({site.name: by_blocks[site.blocks_before] for site in sites})
        else:
            final = model.run_with_hooks(piece, stop_at_layer=model.cfg.n_layers, fwd_hooks=hooks)
        finals.append(final)
        for site in sites:
            kept_pieces[site].append(kept[site.name])
    return {site: torch.cat(pieces) for site, pieces in kept_pieces.items()}, torch.cat(finals)


def final_residual_from_hook(model: HookedTransformer, residual: Tensor, site: HookSite) -> Tensor:
    """The residual after the last block (before the final norm), from a residual at the hook. (batch, pos, d)."""
    hf = bridged_model(model)
    if hf is not None:
        full = hf_continuation.continuation_problem(hf) is not None  # then a full forward, its rows all counted
        return _in_pieces(
            model,
            lambda piece: hf_continuation.final_residual_from_hook(hf, piece, site.blocks_before, full_forward=full),
            residual,
        )
    return _in_pieces(
        model,
        lambda piece: model(piece, start_at_layer=site.blocks_before, stop_at_layer=model.cfg.n_layers),
        residual,
    )


def logits_of_final_rows(model: HookedTransformer, rows: Tensor) -> Tensor:
    """Logits of (n, d_model) final-residual rows: final norm, unembedding and soft cap, as the model's forward
    applies them. Scoring only chosen rows, a chunk at a time, keeps memory at O(chunk × d_vocab)."""
    hf = bridged_model(model)
    if hf is not None:
        return hf_continuation.logits_of_final_rows(hf, rows)
    residual = rows[None]  # (1, n, d_model): the shape TransformerLens's modules expect
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    return apply_softcap(model.unembed(residual), model.cfg.output_logits_soft_cap)[0]


def unembedding(model: HookedTransformer) -> Tensor:
    """The (d_model, d_vocab) map from the normalised final residual to logits, the final norm's scale folded in
    (HookedTransformer's W_U; a bridge's is folded here the same way), for logit-weight similarity."""
    hf = bridged_model(model)
    return (model.W_U if hf is None else hf_continuation.folded_unembedding(hf)).detach()


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
