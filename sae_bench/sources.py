"""Load models into TransformerLens the way a downloaded hub model is loaded, from a local HF directory.

HF `save_pretrained` directory → `HookedTransformerConfig` mirroring its config → TransformerLens's own weight
converter → the same processing `HookedTransformer.from_pretrained` applies (fold the norms, centre the
unembedding, fold value biases). `from_pretrained(name, hf_model=...)` would still fetch the hub config for
`name`, so the config is mirrored here (DESIGN §2, §8). Covered: Mistral, Qwen2 (Qwen1.5), Gemma (v1).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import (
    convert_gemma_weights,
    convert_mistral_weights,
    convert_qwen2_weights,
)


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
        raise ValueError(
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
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no config.json: not an HF save_pretrained directory")
    hf_config = AutoConfig.from_pretrained(directory)
    cfg = hooked_config_from_hf(hf_config, dtype=dtype, device=device)
    hf_model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    state_dict = _ARCHITECTURES[cfg.original_architecture][1](hf_model, cfg)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict, fold_ln=True, center_writing_weights=False, center_unembed=True, fold_value_biases=True
    )
    return model.to(device, print_details=False).eval()
