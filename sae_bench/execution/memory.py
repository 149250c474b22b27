"""What a shared pass holds in memory, estimated before anything loads, and the split of its SAEs over passes that
fit a device.

A pass holds its model's weights, one batch's residual at every block and its logits twice (a clean and a
continued run), all in the case's dtype, the weights of every SAE it splices and one SAE's feature activations at a
time (`evaluate_shared` runs its variants one after another), in float32 whatever the model's dtype
(`sae_bench.precision`). When that exceeds what the device can give (`USABLE_FRACTION` of its
memory), the SAEs are split over several passes (`split_for_memory`), in hook order, each pass as full as fits.
Each extra pass runs the clean and zero-ablated rows again: the forward-pass table and `sae-bench plan` count them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sae_bench.cases.registry import Case
from sae_bench.engine.splicing import HookSite
from sae_bench.precision import DEFAULT_DTYPE, ELEMENT_BYTES
from sae_bench.source_spec import parse_spec, source_spec
from sae_bench.sources.zoo.artifacts import zoo_root

USABLE_FRACTION = 0.9
"""Of a device's memory, what the passes are planned to fill: the rest is the allocator's fragmentation, the CUDA
context and the estimate's slack (norms, biases, temporaries of one layer)."""

_WIDTH = re.compile(r"width_(\d+)([km])")


def model_config(spec: str) -> dict | None:
    """A model's HF config, read where it already is (the zoo, a local folder, the HF cache); None elsewhere."""
    parsed = source_spec(spec)
    if parsed.scheme == "zoo":
        path = zoo_root() / "models" / parsed.body / "config.json"
    elif Path(spec).is_dir():
        path = Path(spec) / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        parsed = parse_spec(spec)
        cached = try_to_load_from_cache(parsed.body, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
        if path is None:
            return _transformer_lens_table(parsed.params.get("as", parsed.body))
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _transformer_lens_table(repo: str) -> dict | None:
    """The sizes TransformerLens keeps in its own tables (Gemma, Gemma 2 and 3, Llama 3.1), in HF config keys; None
    for a model whose sizes only its hub config gives."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config, get_official_model_name  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    if not any(name in repo.lower() for name in ("gemma", "llama")):  # the others' sizes come from the hub config
        return None
    try:
        cfg = convert_hf_model_config(get_official_model_name(repo))
    except Exception:  # not in TransformerLens's list of models
        return None
    return {
        "hidden_size": cfg["d_model"],
        "num_hidden_layers": cfg["n_layers"],
        "vocab_size": cfg["d_vocab"],
        "num_attention_heads": cfg["n_heads"],
        "head_dim": cfg["d_head"],
        "num_key_value_heads": cfg.get("n_key_value_heads") or cfg["n_heads"],
        "intermediate_size": cfg["d_mlp"],
        "tie_word_embeddings": "gemma" in repo.lower(),
    }


def model_bytes(config: dict, dtype: str = DEFAULT_DTYPE) -> int:
    """Bytes of a decoder's weights in `dtype` (`model_parameters` of them)."""
    return ELEMENT_BYTES[dtype] * model_parameters(config)


def model_parameters(config: dict) -> int:
    """A decoder's parameters from its HF config: embeddings (and an untied unembedding), per layer attention
    (grouped-query aware) and a gated MLP."""
    d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    d_head = config.get("head_dim") or d // heads
    kv = config.get("num_key_value_heads") or heads
    attention = d * d_head * (2 * heads + 2 * kv)
    mlp = 3 * d * config["intermediate_size"]
    embeddings = vocab * d * (1 if config.get("tie_word_embeddings", True) else 2)
    return embeddings + layers * (attention + mlp)


def batch_bytes(config: dict, batch_size: int, context: int, dtype: str = DEFAULT_DTYPE) -> int:
    """One batch's residual at every block and its logits, twice (a clean and a continued run), in `dtype`."""
    rows = batch_size * context
    per_row = config["hidden_size"] * (config["num_hidden_layers"] + 1) + config["vocab_size"]
    return 2 * ELEMENT_BYTES[dtype] * rows * per_row


def unit_memory_bytes(unit: Sequence[Case]) -> int | None:
    """What a unit holds besides its SAEs: each of its models' weights and one batch through it. None when a model's
    config is not at hand."""
    case = unit[0]
    total = 0
    for key in case.model_keys:
        config = model_config(key.spec)
        if config is None:
            return None
        total += model_bytes(config, key.dtype) + batch_bytes(config, case.batch_size, case.context, key.dtype)
    return total


def sae_width(case: Case) -> int | None:
    """The SAE's width as its id (`width_16k`) or its zoo config states it; None when neither does."""
    width = _WIDTH.search(case.sae)
    if width:
        return int(width.group(1)) * (1024 if width.group(2) == "k" else 1024 * 1024)
    sae = source_spec(case.sae)
    if sae.scheme == "zoo":
        config = zoo_root() / "saes" / sae.body / "cfg.json"
        return json.loads(config.read_text())["d_sae"] if config.is_file() else None
    return None


def sae_weight_bytes(d_sae: int, d_model: int) -> int:
    """An SAE's float32 weights: encoder, decoder, their biases and a threshold."""
    return 4 * (2 * d_sae * d_model + 2 * d_sae + d_model)


def sae_activation_bytes(d_sae: int, d_model: int, batch_size: int, context: int) -> int:
    """One batch of an SAE's feature activations and its spliced residual, float32."""
    return 4 * batch_size * context * (d_sae + d_model)


def pass_peak_bytes(base: int, widths: Sequence[int], d_model: int, batch_size: int, context: int) -> int:
    """A pass's peak: `base` (models and a batch) with every SAE's weights and one SAE's activations at a time."""
    if not widths:
        return base
    weights = sum(sae_weight_bytes(w, d_model) for w in widths)
    return base + weights + sae_activation_bytes(max(widths), d_model, batch_size, context)


def split_for_memory(
    cases: Sequence[Case], width: Callable[[Case], int], *, base: int, d_model: int, memory: float | None
) -> list[list[Case]]:
    """The cases of one shared pass as passes that each fit `USABLE_FRACTION * memory` (one pass: all of them, when
    they fit or `memory` is None). In hook order, each pass as full as fits, so a hook's SAEs stay together and the
    clean and zero-ablated rows are rerun as few times as may be; an SAE too big alone gets a pass of its own. When
    the model and one batch with the smallest SAE do not fit, splitting cannot help: one pass, which fits nowhere."""
    if memory is None:
        return [list(cases)]
    first = cases[0]
    widths = {case.id: width(case) for case in cases}

    def fits(members: list[int]) -> bool:
        return pass_peak_bytes(base, members, d_model, first.batch_size, first.context) <= USABLE_FRACTION * memory

    if fits(list(widths.values())) or not fits([min(widths.values())]):
        return [list(cases)]
    ordered = sorted(cases, key=lambda c: (_depth(c.hook), c.hook))  # stable: case order within a hook
    passes: list[list[Case]] = []
    for case in ordered:
        if passes and fits([widths[c.id] for c in passes[-1]] + [widths[case.id]]):
            passes[-1].append(case)
        else:
            passes.append([case])
    return passes


def _depth(hook: str) -> int:
    site = HookSite.parse(hook)
    return site.blocks_before if site else 0


def device_memory_bytes(device: str) -> int | None:
    """What the device has: a CUDA device's total memory; on the CPU, the host's available memory (None unknown)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None
