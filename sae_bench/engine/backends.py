"""The model backends: everything the engine asks of a model, behind one narrow interface.

`ModelBackend` is that interface: the model's sizes and residual hooks, running to a hook (the prefix), one forward
keeping several hooks, continuing from a hook with a replaced residual (stacked rows), the logits of final-residual
rows, the folded unembedding, greedy generation for rollouts, counting the rows its blocks run (the forward-pass
table) and its HF checkpoint's weights by layer (drift). `HookedBackend` runs a TransformerLens `HookedTransformer`
with its own `stop_at_layer` / `start_at_layer`; `BridgeBackend` runs a TransformerBridge on the HF model it wraps
(`sae_bench.engine.hf_continuation`, since the bridge's `forward(start_at_layer=…)` raises NotImplementedError).
`backend_of(model)` gives a loaded model's backend; `sae_bench.engine.splicing` and `sae_bench.sources.chat` reach the
model only through it.
"""

from __future__ import annotations

import re
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn
from transformer_lens import HookedTransformer
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.utilities.activation_functions import apply_softcap

from sae_bench.engine import hf_continuation
from sae_bench.errors import BadInput
from sae_bench.precision import DTYPES, dtype_problem

Model = TransformerBridge | HookedTransformer
"""A loaded model the engine runs, on either backend (`backend_of` gives its backend)."""


class ModelBackend(ABC):
    """One loaded model as the engine sees it. A residual "after `blocks_before` blocks" is the input of block
    `blocks_before` (`blocks.L.hook_resid_pre` = L, `blocks.L.hook_resid_post` = L + 1), or of the final norm."""

    name: ClassVar[str]

    def __init__(self, model) -> None:
        self.model = model

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.model.cfg.d_model

    @property
    def d_vocab(self) -> int:
        return self.model.cfg.d_vocab

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.cfg.device or "cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.model.cfg.dtype

    @property
    def tokenizer(self):
        """The model's tokenizer (None when it has none)."""
        return self.model.tokenizer

    def weight_bytes(self) -> int:
        """Bytes its parameters take."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def is_causal(self) -> bool:
        """Whether no position reads a later one (decoder LMs), so a row may be cut after the last position needed."""
        return self.model.cfg.attention_dir == "causal"

    def residual_hooks(self) -> list[str]:
        """Every residual-stream hook the engine can cut the model at, in forward order."""
        return [f"blocks.{i}.hook_resid_{kind}" for i in range(self.n_layers) for kind in ("pre", "post")]

    def count_block_rows(self, count: Callable[[int, int], None]) -> None:
        """Call `count(layer, rows)` for every call of every block from now on, with the rows it ran (permanent
        hooks: they survive reset_hooks). Here on TransformerLens's block hook points; the bridge counts on HF's
        layers."""
        for layer in range(self.n_layers):
            self.model.add_hook(
                f"blocks.{layer}.hook_resid_post",
                lambda tensor, hook, layer=layer: count(layer, tensor.shape[0]),
                is_permanent=True,
            )

    @abstractmethod
    def run_to_hook(self, tokens: Tensor, blocks_before: int) -> Tensor:
        """The residual after `blocks_before` blocks. tokens: (batch, pos) → (batch, pos, d_model); the blocks after
        are not run."""

    @abstractmethod
    def run_keeping(self, tokens: Tensor, blocks: Sequence[int]) -> tuple[dict[int, Tensor], Tensor]:
        """One forward through every block keeping the residual after each of `blocks` blocks: (those residuals, the
        residual after the last block, before the final norm). Each kept residual equals `run_to_hook`'s."""

    @abstractmethod
    def final_residual_from(self, residual: Tensor, blocks_before: int) -> Tensor:
        """The residual after the last block (before the final norm), continued from `residual` (batch, pos, d) after
        `blocks_before` blocks; rows are independent, so stacked variants are stacked rows."""

    @abstractmethod
    def logits_of_final_rows(self, rows: Tensor) -> Tensor:
        """Logits of (n, d_model) final-residual rows: final norm, unembedding and soft cap, as the forward applies
        them."""

    @abstractmethod
    def unembedding(self) -> Tensor:
        """The (d_model, d_vocab) map from the normalised final residual to logits, the final norm's scale folded
        in, for logit-weight similarity."""

    @abstractmethod
    def generate(self, batch: Tensor, new: int, stop_token: int, pad_token: int) -> Tensor:
        """Greedy tokens (prompt and continuation) of a batch of equal-length prompts, at most `new` new ones,
        each stopping after `stop_token`."""

    def hf_weights(self) -> Iterator[tuple[str, str, Tensor]]:
        """(name, layer, tensor) of every parameter of the model's HF checkpoint, as HF names it (its raw weights,
        whatever the backend runs); layer is "block NNN" for a decoder layer's, else the module's name. Read again
        from the checkpoint the model was loaded from, on both backends: a HookedTransformer's own weights are
        processed (folded norms, centred unembedding), and a bridge adds parameters of its own (a zero `lm_head`
        bias), so neither model's parameters are the checkpoint's."""
        checkpoint = getattr(self.model, HF_CHECKPOINT, None)
        if checkpoint is None:
            raise ValueError(
                "this model was not loaded from an HF checkpoint (sae_bench.load_model records it), so its raw "
                "weights, on which weight drift is defined, are unknown; load it with load_model"
            )
        return checkpoint_weights(*checkpoint)


_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
HF_CHECKPOINT = "sae_bench_hf_checkpoint"
"""The attribute a model loaded from an HF checkpoint keeps it under: (name or directory, vocab rows or None)."""


def _layer_label(name: str) -> str:
    match = _HF_LAYER.match(name)
    return f"block {int(match.group(1)):03d}" if match else name.removeprefix("model.").split(".")[0]


def checkpoint_weights(name_or_path: str, vocab: int | None = None) -> Iterator[tuple[str, str, Tensor]]:
    """(name, layer, tensor) of every parameter of an HF checkpoint (a directory or a hub name), float32, its
    embeddings resized to `vocab` rows when given; what weight drift reads."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - heavy, and only weight drift needs it here

    hf = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    if vocab is not None:
        hf.resize_token_embeddings(vocab)
    for name, weight in hf.named_parameters():
        yield name, _layer_label(name), weight


def remember_hf_checkpoint(model: Model, name_or_path: str, vocab: int | None = None) -> None:
    """Note where a model's weights came from (`ModelBackend.hf_weights` reads them again)."""
    setattr(model, HF_CHECKPOINT, (str(name_or_path), vocab))


class HookedBackend(ModelBackend):
    """A TransformerLens HookedTransformer (weights processed: folded norms, centred unembedding)."""

    name = "hooked"

    def run_to_hook(self, tokens: Tensor, blocks_before: int) -> Tensor:
        return self.model(tokens, stop_at_layer=blocks_before)

    def run_keeping(self, tokens: Tensor, blocks: Sequence[int]) -> tuple[dict[int, Tensor], Tensor]:
        kept: dict[int, Tensor] = {}
        hooks = [
            (self._hook_after(at), lambda tensor, hook, at=at: kept.__setitem__(at, tensor))
            for at in dict.fromkeys(blocks)
        ]
        final = self.model.run_with_hooks(tokens, stop_at_layer=self.n_layers, fwd_hooks=hooks)
        return {at: kept[at] for at in blocks}, final

    def _hook_after(self, blocks_before: int) -> str:
        """The hook that sees the residual after `blocks_before` blocks."""
        if blocks_before < self.n_layers:
            return f"blocks.{blocks_before}.hook_resid_pre"
        return f"blocks.{self.n_layers - 1}.hook_resid_post"

    def final_residual_from(self, residual: Tensor, blocks_before: int) -> Tensor:
        return self.model(residual, start_at_layer=blocks_before, stop_at_layer=self.n_layers)

    def logits_of_final_rows(self, rows: Tensor) -> Tensor:
        residual = rows[None]  # (1, n, d_model): the shape TransformerLens's modules expect
        if self.model.cfg.normalization_type is not None:
            residual = self.model.ln_final(residual)
        return apply_softcap(self.model.unembed(residual), self.model.cfg.output_logits_soft_cap)[0]

    def unembedding(self) -> Tensor:
        return self.model.W_U.detach()

    def generate(self, batch: Tensor, new: int, stop_token: int, pad_token: int) -> Tensor:
        return self.model.generate(
            batch,
            max_new_tokens=new,
            do_sample=False,
            stop_at_eos=True,
            eos_token_id=stop_token,
            use_past_kv_cache=True,
            verbose=False,
            prepend_bos=False,
            return_type="tokens",
        )


class BridgeBackend(ModelBackend):
    """A TransformerLens TransformerBridge, cut at a hook on the HF causal LM it wraps (its raw weights). While the
    engine runs the model, the bridge's components are set aside (`unbridged`): the engine reads no hook point, and
    each costs a call per module per step (greedy rollouts on the zoo: 1.4 s unbridged, 2.2–2.6 s bridged, the same
    tokens), and HF's own attention reads the KV cache transformers 5 hands it (TransformerLens 3.9's attention
    bridge reads another name, and bridged greedy decoding goes wrong from the second new token)."""

    name = "bridge"

    @property
    def hf(self):
        """The HF causal LM the bridge runs."""
        return self.model.original_model

    def count_block_rows(self, count: Callable[[int, int], None]) -> None:
        for index, layer in enumerate(self.hf.model.layers):
            block = getattr(layer, "original_component", None) or layer  # counted bridged or not
            block.register_forward_hook(lambda module, args, output, index=index: count(index, _first(output).shape[0]))

    def run_to_hook(self, tokens: Tensor, blocks_before: int) -> Tensor:
        with unbridged(self.hf):
            return hf_continuation.run_to_hook(self.hf, tokens, blocks_before)

    def run_keeping(self, tokens: Tensor, blocks: Sequence[int]) -> tuple[dict[int, Tensor], Tensor]:
        with unbridged(self.hf):
            return hf_continuation.run_keeping(self.hf, tokens, blocks)

    def final_residual_from(self, residual: Tensor, blocks_before: int) -> Tensor:
        full = hf_continuation.continuation_problem(self.hf) is not None  # a full forward, its blocks counted as run
        with unbridged(self.hf):
            return hf_continuation.final_residual_from_hook(self.hf, residual, blocks_before, full_forward=full)

    def logits_of_final_rows(self, rows: Tensor) -> Tensor:
        with unbridged(self.hf):
            return hf_continuation.logits_of_final_rows(self.hf, rows)

    def unembedding(self) -> Tensor:
        return hf_continuation.folded_unembedding(self.hf).detach()

    def generate(self, batch: Tensor, new: int, stop_token: int, pad_token: int) -> Tensor:
        with unbridged(self.hf):
            return self.hf.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                max_new_tokens=new,
                do_sample=False,
                use_cache=True,
                eos_token_id=stop_token,
                pad_token_id=pad_token,
            )


def _first(output) -> Tensor:
    """A decoder layer's hidden states, whether it returns them alone or first in a tuple."""
    return output[0] if isinstance(output, tuple) else output


_SWAPS: weakref.WeakKeyDictionary[nn.Module, list[tuple[nn.Module, str, nn.Module, nn.Module]]] = (
    weakref.WeakKeyDictionary()
)
"""Per model, its bridge components as (parent, name, bridge, the HF module it wraps), innermost first: found once
(a walk of the module tree took 0.8 ms a call, and the engine sets the bridge aside several times a batch)."""


def _bridge_components(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    found: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []

    def walk(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            original = child._modules.get("_original_component") if hasattr(child, "original_component") else None
            if original is None:
                walk(child)
            else:
                walk(original)
                found.append((parent, name, child, original))

    walk(module)
    return found


@contextmanager
def unbridged(module: nn.Module) -> Iterator[None]:
    """Within, every TransformerBridge component inside `module` is replaced by the HF module it wraps (innermost
    first), so `module` runs as plain HF; they are put back after."""
    swaps = _SWAPS.get(module)
    if swaps is None or any(parent._modules.get(name) is not bridge for parent, name, bridge, _ in swaps):
        swaps = _bridge_components(module)
        if swaps:  # none when already set aside (nested): keep the model's own list
            _SWAPS[module] = swaps
    for parent, name, _, original in swaps:
        parent._modules[name] = original
    try:
        yield
    finally:
        for parent, name, bridge, _ in reversed(swaps):
            parent._modules[name] = bridge


BACKENDS = (BridgeBackend.name, HookedBackend.name)
"""The names `--backend` takes; the first is the default (docs/performance.md, "Model backends", says why)."""

DEFAULT_BACKEND = BACKENDS[0]


@contextmanager
def hooked_transformer_on_purpose() -> Iterator[None]:
    """Build a HookedTransformer deliberately (the `hooked` backend, a reference the bridge is checked against)
    without TransformerLens 3.9's deprecation warning; everywhere else the suite's tests turn that warning into an
    error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"HookedTransformer(\.from_pretrained)? is deprecated", DeprecationWarning)
        yield


def backend_of(model) -> ModelBackend:
    """The backend that runs `model`: a TransformerBridge's (it wraps an HF model), else HookedTransformer's."""
    return (BridgeBackend if hasattr(model, "original_model") else HookedBackend)(model)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name (`sae_bench.precision.DTYPES`)."""
    if name not in DTYPES:
        raise BadInput(dtype_problem(name, "dtype"))
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as the suite names it: `torch.bfloat16` → `bfloat16`."""
    return str(dtype).removeprefix("torch.")
