"""Load models into TransformerLens the way a downloaded hub model is loaded, from a local HF directory.

HF `save_pretrained` directory → `HookedTransformerConfig` mirroring its config → TransformerLens's own weight
converter → the same processing `HookedTransformer.from_pretrained` applies (fold the norms, centre the
unembedding, fold value biases). `from_pretrained(name, hf_model=...)` would still fetch the hub config for
`name`, so the config is mirrored here (docs/design.md §2, §8). Covered: Mistral, Qwen2 (Qwen1.5), Gemma (v1).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import (
    convert_gemma_weights,
    convert_mistral_weights,
    convert_qwen2_weights,
)

from sae_bench.engine.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    Model,
    hooked_transformer_on_purpose,
    remember_hf_checkpoint,
)
from sae_bench.errors import BadInput
from sae_bench.source_spec import parse_spec, source_spec
from sae_bench.sources import kissane_prompts
from sae_bench.sources.chat import stored_prompt, template_prompt
from sae_bench.sources.hub import load_alpaca_instructions, load_hub_model, load_hub_rows, load_hub_sae
from sae_bench.sources.zoo.artifacts import read_manifest, verified_directory
from sae_bench.sources.zoo.recipes import model_names, sae_names
from sae_bench.sources.zoo.tokenizer import END_OF_TURN, USER, load_tokenizer


def _common(hf: Any) -> dict[str, Any]:
    return {
        "d_model": hf.hidden_size,
        "n_heads": hf.num_attention_heads,
        "n_key_value_heads": hf.num_key_value_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "d_vocab": hf.vocab_size,
        "eps": hf.rms_norm_eps,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "gated_mlp": True,
        "rotary_base": float(hf.rope_parameters["rope_theta"])
        if getattr(hf, "rope_parameters", None)
        else float(getattr(hf, "rope_theta", 10000.0)),
    }


def _head_dim(hf: Any) -> int:
    head_dim = getattr(hf, "head_dim", None)
    return head_dim if head_dim else hf.hidden_size // hf.num_attention_heads


def _mistral_config(hf: Any) -> dict[str, Any]:
    window = getattr(hf, "sliding_window", None)
    local = bool(window) and window < hf.max_position_embeddings
    return _common(hf) | {
        "d_head": _head_dim(hf),
        "act_fn": hf.hidden_act,
        "window_size": window if local else None,
        "attn_types": ["local"] * hf.num_hidden_layers if local else None,
        "use_local_attn": local,
    }


def _qwen2_config(hf: Any) -> dict[str, Any]:
    d_head = _head_dim(hf)
    return _common(hf) | {
        "d_head": d_head,
        "act_fn": hf.hidden_act,
        "use_attn_scale": True,
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "final_rms": True,
        "default_prepend_bos": False,
    }


def _gemma_config(hf: Any) -> dict[str, Any]:
    d_head = _head_dim(hf)
    return _common(hf) | {
        "d_head": d_head,
        # HF Gemma v1 runs gelu_pytorch_tanh whatever `hidden_act` says; TransformerLens calls that "gelu_pytorch_tanh".
        "act_fn": getattr(hf, "hidden_activation", None) or "gelu_pytorch_tanh",
        "rotary_dim": d_head,
        "use_attn_scale": True,
        "final_rms": True,
    }


_ARCHITECTURES: dict[str, tuple[Callable[[Any], dict[str, Any]], Callable[..., dict[str, torch.Tensor]]]] = {
    "MistralForCausalLM": (_mistral_config, convert_mistral_weights),
    "Qwen2ForCausalLM": (_qwen2_config, convert_qwen2_weights),
    "GemmaForCausalLM": (_gemma_config, convert_gemma_weights),
}


def hooked_config_from_hf(
    hf_config: Any, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> HookedTransformerConfig:
    """A HookedTransformerConfig mirroring an HF config of a supported architecture, norms folded."""
    architecture = (hf_config.architectures or [None])[0]
    if architecture not in _ARCHITECTURES:
        raise BadInput(
            f"architecture {architecture!r} is not supported for local loading; supported: {', '.join(_ARCHITECTURES)}"
        )
    cfg = _ARCHITECTURES[architecture][0](hf_config) | {
        "original_architecture": architecture,
        "model_name": getattr(hf_config, "name_or_path", "") or architecture,
        "normalization_type": "RMSPre",  # the norm weights are folded into the next linear layers
        "init_weights": False,
        "dtype": dtype,
        "device": device,
    }
    return HookedTransformerConfig(**cfg)


def load_hf_directory(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu", tokenizer: Any = None
) -> HookedTransformer:
    """A TransformerLens model from an HF `save_pretrained` directory, processed as `from_pretrained` does."""
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no config.json: not an HF save_pretrained directory")
    hf_config = AutoConfig.from_pretrained(directory)
    cfg = hooked_config_from_hf(hf_config, dtype=dtype, device=device)
    hf_model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    state_dict = _ARCHITECTURES[cfg.original_architecture][1](hf_model, cfg)
    with hooked_transformer_on_purpose():
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=True, center_writing_weights=False, center_unembed=True, fold_value_biases=True
    )
    remember_hf_checkpoint(model, directory)
    return model.to(device, print_details=False).eval()


# -- loading by spec ---------------------------------------------------------------------------------------------


def _zoo_name(spec: str, kind: str, known: list[str]) -> str:
    """The zoo name a `zoo:` spec gives, checked against the zoo's `known` names of its kind."""
    name = source_spec(spec).body
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join('zoo:' + c for c in close)}?" if close else ""
        raise BadInput(f"no zoo {kind} {spec!r}{hint} (`sae-bench zoo list` shows every name)")
    return name


def load_zoo_tokenizer():
    """The zoo tokenizer, hash-checked."""
    return load_tokenizer(verified_directory("tokenizer"))


def load_model(
    spec: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", backend: str = DEFAULT_BACKEND
) -> Model:
    """A TransformerLens model by spec: `zoo:FAMILY/NAME`, a local HF `save_pretrained` directory, or a hub spec
    (`hf:ORG/NAME[?as=BASE&vocab=N]`, see `sae_bench.sources.hub`), on the given
    backend (BACKENDS; the bridge by default)."""
    if backend not in BACKENDS:
        raise BadInput(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
    if source_spec(spec).scheme == "zoo":
        name = _zoo_name(spec, "model", model_names())
        directory = verified_directory(f"models/{name}")
        if backend == "bridge":
            return _bridge(str(directory), dtype=dtype, device=device, tokenizer=load_zoo_tokenizer())
        return load_hf_directory(directory, dtype=dtype, device=device, tokenizer=load_zoo_tokenizer())
    if Path(spec).is_dir():
        from transformers import AutoTokenizer  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        tokenizer = AutoTokenizer.from_pretrained(spec)
        if backend == "bridge":
            return _bridge(spec, dtype=dtype, device=device, tokenizer=tokenizer)
        return load_hf_directory(spec, dtype=dtype, device=device, tokenizer=tokenizer)

    return load_hub_model(spec, device=device, dtype=dtype, backend=backend)


def _bridge(name_or_path: str, *, dtype: torch.dtype, device: str, tokenizer):
    """A TransformerBridge over the HF model (its raw weights: no folding, no centring)."""
    from transformer_lens.model_bridge import TransformerBridge  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    model = TransformerBridge.boot_transformers(name_or_path, device=device, dtype=dtype, tokenizer=tokenizer).eval()
    remember_hf_checkpoint(model, name_or_path)
    return model


def load_sae(spec: str, *, device: str = "cpu", dtype: str = "float32"):
    """A `sae_lens.SAE` by spec: `zoo:FAMILY/NAME`, a local SAELens directory (cfg.json + weights), or a hub spec
    (`saelens:RELEASE/ID`, `hf:ORG/REPO/FOLDER`, `wandb:ENTITY/PROJECT/NAME:VERSION`)."""
    from sae_lens import SAE  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    if source_spec(spec).scheme == "zoo":
        directory = verified_directory(f"saes/{_zoo_name(spec, 'SAE', sae_names())}")
        return SAE.load_from_disk(directory, device=device, dtype=dtype)
    if Path(spec).is_dir():
        if not (Path(spec) / "cfg.json").is_file():
            raise FileNotFoundError(f"{spec} holds no cfg.json: not a SAELens SAE directory")
        return SAE.load_from_disk(spec, device=device, dtype=dtype)

    return load_hub_sae(spec, device=device, dtype=dtype)


def load_zoo_data(name: str) -> dict[str, torch.Tensor]:
    """A shipped zoo token set, hash-checked, as int64 tensors: `heldout` or `instructions-heldout`."""

    known = ("heldout", "instructions-heldout")
    if name not in known:
        raise BadInput(f"no zoo token set {name!r}; known: {', '.join(known)}")
    directory = verified_directory("data")
    return {key: value.long() for key, value in load_file(directory / f"{name}.safetensors").items()}


def load_dataset_rows(dataset: str, n_rows: int, context: int, model: HookedTransformer) -> torch.Tensor:
    """`n_rows` token rows of `context` tokens: the zoo's held-out rows, or a streamed hub dataset."""
    if dataset == "zoo:heldout":
        rows = load_zoo_data("heldout")["input_ids"]
        if context > rows.shape[1]:
            raise BadInput(
                f"zoo:heldout rows hold {rows.shape[1]} tokens; the case asks for context {context}: lower context"
            )
        if n_rows > rows.shape[0]:
            raise BadInput(
                f"zoo:heldout holds {rows.shape[0]} rows; the case asks for {n_rows} (tokens / context): lower tokens "
                f"to at most {rows.shape[0] * context}"
            )
        return rows[:n_rows, :context]

    return load_hub_rows(dataset, n_rows, context, model.tokenizer)


CHAT_TURN_ENDS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>")
"""Tokens that end an assistant turn in the hub chat templates (Gemma, Llama 3, Qwen / ChatML)."""


def end_of_turn_id(tokenizer, *, chat_template: bool = True) -> int:
    """The token that ends the assistant's turn: the zoo's <|end|>; in a hub model's own chat template its turn
    marker (Gemma's <end_of_turn>, Llama 3's <|eot_id|>, ChatML's <|im_end|>); else the tokenizer's EOS (what
    Kissane's generation stopped at with his own templates)."""
    vocab = tokenizer.get_vocab()
    if END_OF_TURN in vocab:
        return tokenizer.convert_tokens_to_ids(END_OF_TURN)
    marker = next((token for token in CHAT_TURN_ENDS if token in vocab), None) if chat_template else None
    return tokenizer.eos_token_id if marker is None else tokenizer.convert_tokens_to_ids(marker)


def load_chat_prompts(dataset: str, tokenizer):
    """Chat prompts with the user's span: the zoo's held-out instructions, or Kissane's alpaca sample (in his
    templates with `?template=NAME`, else in the tokenizer's chat template)."""
    if dataset == "zoo:instructions-heldout":
        data = load_zoo_data("instructions-heldout")
        user, end = tokenizer.convert_tokens_to_ids(USER), tokenizer.convert_tokens_to_ids(END_OF_TURN)
        return [
            stored_prompt(row[:length].tolist(), user, end)
            for row, length in zip(data["input_ids"], data["prompt_length"].tolist(), strict=True)
        ]

    template = parse_spec(dataset).params.get("template")
    if template is not None:  # `alpaca:ORG/NAME?template=mistral|qwen|gemma`: Kissane's own templates
        return [kissane_prompts.prompt(tokenizer, template, i) for i in load_alpaca_instructions(dataset)]
    return [template_prompt(tokenizer, instruction) for instruction in load_alpaca_instructions(dataset)]


def source_fingerprint(spec: str) -> str:
    """What identifies a source's weights: the manifest sha256 of a zoo model's weights, the HF cache snapshot
    (commit) of a hub model's repo, else the spec itself."""
    parsed = source_spec(spec)
    if parsed.scheme == "zoo":
        return f"{spec}@{read_manifest()['files'][f'models/{parsed.body}/model.safetensors']}"
    if parsed.scheme == "hf":
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        cached = try_to_load_from_cache(parsed.body, "config.json")
        return f"{spec}@{Path(cached).parent.name}" if isinstance(cached, str) else spec
    return spec
