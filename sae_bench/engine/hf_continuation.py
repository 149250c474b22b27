"""Run a Hugging Face causal LM to a residual hook, and continue it from there with a replaced residual: what the
engine asks of `HookedTransformer(start_at_layer=…, stop_at_layer=…)`, for models TransformerLens's
TransformerBridge wraps (its `forward(start_at_layer=…)` raises NotImplementedError: it hands the layer loop to HF).

The continuation is the model's own forward with the decoder layers before the hook skipped (each returns its input
unchanged) and the residual put in at the hook, so the attention masks, position embeddings, sliding windows,
per-layer attention types and logit soft-capping are built exactly as the model's forward builds them; only the
token embedding lookup, which is no block, runs before the hook. A hook's residual is the input of decoder layer
`blocks_before` (`blocks.L.hook_resid_pre` = L, `blocks.L.hook_resid_post` = L + 1), or of the final norm after the
last layer. `tests/engine/test_hf_continuation.py` proves the continuation equal, bit for bit, to a full forward with
the residual replaced, from every hook of each architecture the suite uses (`CONTINUED_ARCHITECTURES`); for any other
the engine runs that full forward instead (`full_forward=True`), its blocks counted as run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

CONTINUED_ARCHITECTURES = (
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "LlamaForCausalLM",
)
"""Architectures whose forward runs `model.layers` in order on the hidden states alone, proven by the tests."""


class _Skipped(nn.Module):
    """A decoder layer that is not run: its input passes through."""

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        return hidden_states


class _Stop(Exception):
    """Raised at the hook when the forward is only run that far."""


def continuation_problem(model) -> str | None:
    """Why `model` cannot be continued from a hook by skipping its first layers (None: it can)."""
    architecture = type(model).__name__
    if architecture not in CONTINUED_ARCHITECTURES:
        return (
            f"{architecture} is not one of the architectures whose continuation from a hook is proven "
            f"({', '.join(CONTINUED_ARCHITECTURES)}): each continuation is a full forward with the residual replaced"
        )
    return None


def _site(model, blocks_before: int) -> nn.Module:
    """The module whose input is the residual after `blocks_before` decoder layers."""
    inner = getattr(model, "model", None)
    if not isinstance(getattr(inner, "layers", None), nn.ModuleList) or not hasattr(inner, "norm"):
        raise ValueError(
            f"{type(model).__name__} has no model.layers and model.norm: the bridge backend cannot cut it at a hook "
            "(run it with --backend hooked)"
        )
    layers = inner.layers
    if not 0 <= blocks_before <= len(layers):
        raise ValueError(f"a residual after {blocks_before} blocks: the model has {len(layers)}")
    return layers[blocks_before] if blocks_before < len(layers) else model.model.norm


@contextmanager
def _residual_replaced(model, blocks_before: int, residual: Tensor) -> Iterator[None]:
    def put(module, args, kwargs):
        if args:
            return (residual, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": residual}

    handle = _site(model, blocks_before).register_forward_pre_hook(put, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _first_layers_skipped(model, blocks: int) -> Iterator[None]:
    layers = model.model.layers
    kept = [layers[i] for i in range(blocks)]
    try:
        for i in range(blocks):
            layers[i] = _Skipped()
        yield
    finally:
        for i, layer in enumerate(kept):
            layers[i] = layer


@contextmanager
def _kept(model, blocks: Iterable[int], store: dict[int, Tensor], stop_at: int | None) -> Iterator[None]:
    """Keep the residual after each of `blocks` layers in `store`; stop the forward at `stop_at` layers."""
    handles = []
    for at in sorted(set(blocks) | ({stop_at} - {None})):

        def catch(module, args, kwargs, at=at):
            store[at] = args[0] if args else kwargs["hidden_states"]
            if at == stop_at:
                raise _Stop

        handles.append(_site(model, at).register_forward_pre_hook(catch, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _run(model, tokens: Tensor) -> None:
    try:
        model(tokens, use_cache=False)
    except _Stop:
        pass


def run_to_hook(model, tokens: Tensor, blocks_before: int) -> Tensor:
    """The residual after `blocks_before` decoder layers, (batch, pos, d_model); the layers after are not run."""
    store: dict[int, Tensor] = {}
    with _kept(model, (), store, stop_at=blocks_before):
        _run(model, tokens)
    return store[blocks_before]


def run_keeping(model, tokens: Tensor, blocks: Iterable[int]) -> tuple[dict[int, Tensor], Tensor]:
    """One forward through every layer, keeping the residual after each of `blocks` layers: (those residuals, the
    residual after the last layer, before the final norm); the norm and unembedding are not run."""
    store: dict[int, Tensor] = {}
    n_layers = len(model.model.layers)
    with _kept(model, blocks, store, stop_at=n_layers):
        _run(model, tokens)
    return {at: store[at] for at in blocks}, store[n_layers]


def final_residual_from_hook(model, residual: Tensor, blocks_before: int, *, full_forward: bool = False) -> Tensor:
    """The residual after the last layer (before the final norm), continued from `residual` after `blocks_before`
    layers. The token ids only shape the positions and masks (the layers that read embeddings are skipped); with
    `full_forward` they run on placeholder ids and their output is replaced."""
    n_layers = len(model.model.layers)
    placeholder = torch.zeros(residual.shape[:2], dtype=torch.long, device=residual.device)
    store: dict[int, Tensor] = {}
    with _first_layers_skipped(model, 0 if full_forward else min(blocks_before, n_layers)):
        with _residual_replaced(model, blocks_before, residual), _kept(model, (), store, stop_at=n_layers):
            _run(model, placeholder)
    return store[n_layers]


def logits_of_final_rows(model, rows: Tensor) -> Tensor:
    """Logits of (n, d_model) final-residual rows: the final norm, the LM head and the soft cap (Gemma 2 and 3), as
    the model's forward applies them."""
    logits = model.lm_head(model.model.norm(rows[None]))[0]
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if not cap else torch.tanh(logits / cap) * cap


def folded_unembedding(model) -> Tensor:
    """The LM head as (d_model, d_vocab) with the final RMS norm's scale folded in, as HookedTransformer's `fold_ln`
    folds it (Gemma's norms scale by 1 + weight); equal to its W_U up to the centring over the vocabulary."""
    norm = model.model.norm
    norm = getattr(norm, "original_component", norm)  # a bridge wraps the HF norm
    scale = norm.weight + 1 if type(norm).__name__.startswith("Gemma") else norm.weight
    return scale[:, None] * model.lm_head.weight.T


def continue_from_hook(
    model, tokens: Tensor, blocks_before: int, residual: Tensor, *, full_forward: bool = False
) -> Tensor:
    """The logits of `tokens` with the residual after `blocks_before` layers replaced by `residual` (same shape as
    the tokens' residual; stacked variants are stacked rows of `tokens`). The layers before the hook are skipped,
    unless `full_forward` (an architecture not in CONTINUED_ARCHITECTURES): then they run and their output is
    replaced."""
    if residual.shape[:2] != tokens.shape:
        raise ValueError(
            f"a residual of shape {tuple(residual.shape)} cannot continue tokens of shape {tuple(tokens.shape)}"
        )
    skipped = 0 if full_forward else blocks_before
    with _first_layers_skipped(model, min(skipped, len(model.model.layers))):
        with _residual_replaced(model, blocks_before, residual):
            return model(tokens, use_cache=False).logits
