"""Build every stand-in the hub cases need, in the places and formats the real sources use.

- an HF hub cache (`<root>/hub`, the layout `huggingface_hub` writes: `models--ORG--NAME/refs/main` and
  `snapshots/<commit>/…`) holding each miniature model under its real repo id, and each SAELens release's files
  (`<folder>/cfg.json`, `sae_weights.safetensors`, `sparsity.safetensors`) under the release's repo;
- wandb artifact directories as `wandb artifact get` writes them (`<root>/artifacts/NAME:VERSION`), in the
  SAELens-3.x format Kissane et al.'s SAEs were saved in (old config keys, the leftover all-ones `scaling_factor`);
- local dataset copies (`<root>/datasets/ORG/NAME`) in each dataset's own layout and columns.

What is built follows from the hub cases themselves, so a new hub case needs only a miniature for a new repo.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from sae_bench.source_spec import parse_spec, source_spec
from sae_bench.sources.rehearsal.miniatures import (
    D_MODEL,
    build_tokenizer,
    miniature,
    save_miniature,
    training_texts,
)

D_SAE = 256
"""Width of every miniature SAE."""


@dataclass
class Needs:
    """The hub sources a set of cases names: model repos, SAEs (spec → hook) and datasets."""

    repos: set[str] = field(default_factory=set)
    saes: dict[str, str] = field(default_factory=dict)
    datasets: set[str] = field(default_factory=set)


def needs_of(cases: Iterable) -> Needs:
    """What the hub cases among `cases` load from the hub."""
    needs = Needs()
    for case in cases:
        if case.tier != "hub":
            continue
        for spec in (case.model, case.base_model):
            if spec is not None and source_spec(spec).scheme == "hf":
                parsed = parse_spec(spec)
                needs.repos.add(parsed.body)
                needs.repos.update([parsed.params["as"]] if "as" in parsed.params else [])
        if source_spec(case.sae).scheme != "zoo":
            needs.saes.setdefault(case.sae, case.hook)
        needs.datasets.add(parse_spec(case.dataset).body)
    return needs


def _seed(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def snapshot_dir(hub_cache: Path, repo: str, repo_type: str = "model") -> Path:
    """The snapshot folder of `repo` in an HF hub cache, created with a `refs/main` pointing at it."""
    folder = hub_cache / f"{repo_type}s--{repo.replace('/', '--')}"
    commit = hashlib.sha1(f"sae-bench rehearsal {repo}".encode()).hexdigest()
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


# -- SAEs --------------------------------------------------------------------------------------------------------


def miniature_sae_tensors(name: str) -> dict[str, torch.Tensor]:
    """Seeded weights of a ReLU SAE with d_in = D_MODEL: unit decoder rows, the encoder their transpose, a negative
    encoder bias so that a fraction of features fires."""
    generator = torch.Generator().manual_seed(_seed(name))
    W_dec = torch.randn(D_SAE, D_MODEL, generator=generator)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    return {
        "W_enc": W_dec.T.contiguous(),
        "W_dec": W_dec,
        "b_enc": torch.full((D_SAE,), -0.5),
        "b_dec": torch.zeros(D_MODEL),
    }


def _layer(hook: str) -> int:
    return int(hook.split(".")[1])


def write_sae(directory: Path, name: str, config: dict, *, leftover_scaling_factor: bool) -> None:
    """cfg.json, sae_weights.safetensors (with SAELens 3.x's all-ones `scaling_factor` if asked) and
    sparsity.safetensors (log10 feature density, as SAELens saved it)."""

    directory.mkdir(parents=True, exist_ok=True)
    tensors = miniature_sae_tensors(name)
    if leftover_scaling_factor:
        tensors["scaling_factor"] = torch.ones(D_SAE)
    save_file(tensors, directory / "sae_weights.safetensors")
    save_file({"sparsity": torch.full((D_SAE,), -3.0)}, directory / "sparsity.safetensors")
    (directory / "cfg.json").write_text(json.dumps(config, indent=2))


def kissane_config(hook: str, model_name: str) -> dict:
    """A SAELens-3.12 `cfg.json` as its training runner saved it (old key names, training fields included)."""
    return {
        "model_name": model_name,
        "model_class_name": "HookedTransformer",
        "hook_name": hook,
        "hook_eval": "NOT_IN_USE",
        "hook_layer": _layer(hook),
        "hook_head_index": None,
        "dataset_path": "monology/pile-uncopyrighted",
        "dataset_trust_remote_code": True,
        "streaming": True,
        "is_dataset_tokenized": False,
        "context_size": 2048,
        "use_cached_activations": False,
        "d_in": D_MODEL,
        "d_sae": D_SAE,
        "b_dec_init_method": "zeros",
        "expansion_factor": D_SAE // D_MODEL,
        "activation_fn": "relu",
        "activation_fn_kwargs": {},
        "normalize_sae_decoder": False,
        "noise_scale": 0.0,
        "from_pretrained_path": None,
        "apply_b_dec_to_input": False,
        "decoder_orthogonal_init": False,
        "decoder_heuristic_init": True,
        "init_encoder_as_decoder_transpose": True,
        "n_batches_in_buffer": 64,
        "training_tokens": 300000000,
        "finetuning_tokens": 0,
        "store_batch_size_prompts": 16,
        "train_batch_size_tokens": 4096,
        "normalize_activations": "expected_average_only_in",
        "device": "cuda",
        "act_store_device": "cuda",
        "seed": 42,
        "dtype": "float32",
        "prepend_bos": True,
        "l1_coefficient": 5,
        "lp_norm": 1,
        "lr": 5e-05,
        "finetuning_method": None,
        "sae_lens_version": "3.12.1",
        "sae_lens_training_version": "3.12.1",
        "tokens_per_buffer": 536870912,
    }


RELEASE_CONFIGS: dict[str, dict] = {
    "mistral-7b-res-wg": {
        "context_size": 256,
        "prepend_bos": False,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",  # constant_norm_rescale comes from SAELens's registry (config_overrides)
        "dataset_path": "monology/pile-uncopyrighted",
    },
    "gemma-2b-res-jb": {
        "context_size": 1024,
        "prepend_bos": True,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "dataset_path": "HuggingFaceFW/fineweb",
    },
}
"""The fields of each SAELens-format release's own `cfg.json` that change the numbers, as published (Kutsyk et al.'s
releases, docs/seed-conventions.md §5 table T; their hook is the SAELens registry id). A stand-in mirrors them, or the
rehearsal tests another SAE."""


def release_config(release: str, release_model: str, hook: str) -> dict:
    """A `cfg.json` of the SAELens releases of 2024 (`hook_point` keys, a `torch.` dtype string), with the
    release's own settings (RELEASE_CONFIGS)."""
    if release not in RELEASE_CONFIGS:
        raise KeyError(
            f"the rehearsal has no configuration for the SAELens release {release!r}: add its cfg.json fields "
            "(context_size, prepend_bos, apply_b_dec_to_input, normalize_activations, dataset_path) to "
            "RELEASE_CONFIGS"
        )
    return {
        "model_name": release_model,
        "hook_point": hook,
        "hook_point_layer": _layer(hook),
        "hook_point_head_index": None,
        "is_dataset_tokenized": False,
        **RELEASE_CONFIGS[release],
        "d_in": D_MODEL,
        "d_sae": D_SAE,
        "expansion_factor": D_SAE // D_MODEL,
        "b_dec_init_method": "geometric_median",
        "lr": 0.0004,
        "l1_coefficient": 8e-05,
        "lp_norm": 1,
        "train_batch_size": 4096,
        "device": "cuda",
        "seed": 42,
        "dtype": "torch.float32",
    }


def write_wandb_sae(artifacts: Path, body: str, hook: str) -> Path:
    """`wandb artifact get ENTITY/PROJECT/NAME:VERSION`'s folder: `artifacts/NAME:VERSION`."""
    name = body.split("/")[-1]
    model_name = name.removeprefix("sae_").split("_blocks")[0]
    directory = artifacts / name
    write_sae(directory, body, kissane_config(hook, model_name), leftover_scaling_factor=True)
    return directory


def write_release_sae(hub_cache: Path, body: str) -> Path:
    """A SAELens release's files under its HF repo, at the folder SAELens's registry names, in the release's own
    format: Gemma Scope's `params.npz`, Gemma Scope 2's `config.json` + `params.safetensors`, Llama Scope's
    `hyperparams.json` + `checkpoints/final.safetensors`, else SAELens's `cfg.json` + `sae_weights.safetensors`."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory  # noqa: PLC0415 - looked up when called: the rehearsal stands in for SAELens's registry and loaders

    from sae_bench.sources.hub import (  # noqa: PLC0415 - the rehearsal's ordering rule: these import the hub libraries, which its set-up must precede
        saelens_release,  # hub: imports huggingface_hub, which the rehearsal must set up first
    )

    release, sae_id, repo, folder = saelens_release(body)
    directory = snapshot_dir(hub_cache, repo) / folder
    loader = get_pretrained_saes_directory()[release].conversion_func
    if loader == "gemma_2":
        write_gemma_scope_sae(directory, body)
    elif loader == "gemma_3":
        write_gemma_scope_2_sae(directory, body, repo=repo, folder=folder)
    elif loader == "llama_scope":
        write_llama_scope_sae(directory, body, hook=f"blocks.{_llama_scope_layer(sae_id)}.hook_resid_post")
    else:
        model = miniature_release_model(release)
        write_sae(directory, body, release_config(release, model, sae_id), leftover_scaling_factor=False)
    (directory.parents[len(Path(folder).parts) - 1] / "README.md").write_text(f"Rehearsal stand-in for {repo}.\n")
    return directory


def _jumprelu_threshold() -> torch.Tensor:
    return torch.full((D_SAE,), 0.25)


def write_gemma_scope_sae(directory: Path, name: str) -> None:
    """Gemma Scope's layout: one `params.npz` (W_enc, W_dec, b_enc, b_dec, threshold) per SAE folder."""

    directory.mkdir(parents=True, exist_ok=True)
    tensors = miniature_sae_tensors(name) | {"threshold": _jumprelu_threshold()}
    np.savez(directory / "params.npz", **{key: value.numpy() for key, value in tensors.items()})


GEMMA_SCOPE_2_L0 = {"small": 15, "medium": 45, "big": 120}
"""Gemma Scope 2's L0 labels as its announcement defines them ("small" 10–20, "medium" 30–60, "big" 90–150): the
stand-in's `config.json` records the middle of each."""


def write_gemma_scope_2_sae(directory: Path, name: str, *, repo: str, folder: str) -> None:
    """Gemma Scope 2's layout: `config.json` (its keys: hook points in HF module names, width, target L0) and
    `params.safetensors` (w_enc, w_dec, b_enc, b_dec, threshold), read by SAELens's `gemma_3` loader."""

    directory.mkdir(parents=True, exist_ok=True)
    tensors = miniature_sae_tensors(name) | {"threshold": _jumprelu_threshold()}
    save_file({key.lower(): value.contiguous() for key, value in tensors.items()}, directory / "params.safetensors")
    layer = re.search(r"layer_(\d+)", folder).group(1)
    label = re.search(r"l0_([a-z]+)", folder).group(1)
    config = {
        "architecture": "jump_relu",
        "model_name": repo.replace("gemma-scope-2", "gemma-3"),
        "hf_hook_point_in": f"model.layers.{layer}.output",
        "hf_hook_point_out": f"model.layers.{layer}.output",
        "width": D_SAE,
        "l0": GEMMA_SCOPE_2_L0[label],
        "type": "sae",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def _llama_scope_layer(sae_id: str) -> int:
    return int(sae_id.removeprefix("l").split("r")[0])


def write_llama_scope_sae(directory: Path, name: str, hook: str) -> None:
    """Llama Scope's layout: `hyperparams.json` and `checkpoints/final.safetensors` with `encoder.*` / `decoder.*`
    (torch Linear layouts), activations normalised to mean norm √d_model by the recorded dataset norm."""

    tensors = miniature_sae_tensors(name)
    (directory / "checkpoints").mkdir(parents=True, exist_ok=True)
    weights = {
        "encoder.weight": tensors["W_enc"].T.contiguous(),
        "encoder.bias": tensors["b_enc"],
        "decoder.weight": tensors["W_dec"].T.contiguous(),
        "decoder.bias": tensors["b_dec"],
    }
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, directory / "checkpoints" / "final.safetensors")
    hyperparams = {
        "d_model": D_MODEL,
        "d_sae": D_SAE,
        "hook_point_in": hook,
        "hook_point_out": hook,
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.25,
        "top_k": 50,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": D_MODEL**0.5, "out": D_MODEL**0.5},
    }
    (directory / "hyperparams.json").write_text(json.dumps(hyperparams, indent=2))


def miniature_release_model(release: str) -> str:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory  # noqa: PLC0415 - looked up when called: the rehearsal stands in for SAELens's registry and loaders

    return get_pretrained_saes_directory()[release].model


# -- datasets ----------------------------------------------------------------------------------------------------


def _documents() -> list[str]:
    return [text for text in training_texts() if len(text) > 200]


PRETOKENIZED: dict[str, tuple[str, int]] = {"ctigges/openwebtext-gemma-1024-cl": ("google/gemma-2b", 1024)}
"""Pretokenized datasets (SAELens's PretokenizeRunner layout): the model whose tokenizer wrote them, and the row
length. openwebtext-gemma-1024-cl's `sae_lens.json`: gemma-2b's tokenizer, context_size 1024, begin_batch_token
bos, sequence_separator_token eos, shuffled; one `input_ids` row per record."""


def write_dataset(root: Path, repo: str) -> Path:
    """A local copy of `repo` in its own layout: Pile-style JSON lines, alpaca rows, FineWeb parquet, or a
    pretokenized dataset's `input_ids` rows (tokenized by the miniature of the model that wrote it)."""

    directory = root / repo
    directory.mkdir(parents=True, exist_ok=True)
    documents = _documents()
    if repo == "tatsu-lab/alpaca":  # 160 rows, every other one with an empty `input` (Kissane keeps those)
        paragraphs = [p for text in documents for p in text.split("\n\n") if len(p.split()) >= 60]
        rows = []
        for i, text in enumerate(paragraphs[:160]):
            instruction = " ".join(text.split()[:12]) + "?"
            context = "" if i % 2 == 0 else " ".join(text.split()[12:30])
            output = " ".join(text.split()[30:60])
            rows.append({"instruction": instruction, "input": context, "output": output, "text": instruction})
        (directory / "data").mkdir(exist_ok=True)
        pd.DataFrame(rows).to_parquet(directory / "data" / "train-00000-of-00001.parquet", index=False)
    elif repo in PRETOKENIZED:
        model, context = PRETOKENIZED[repo]
        tokenizer = build_tokenizer(miniature(model).tokenizer, miniature(model).vocab_size)
        stream = []
        for text in documents * 4:  # enough rows for the rehearsal's token budgets
            stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        body = context - 1  # each row: BOS, then the stream (documents joined by EOS), as the runner cuts it
        rows = [[tokenizer.bos_token_id, *stream[i : i + body]] for i in range(0, len(stream) - body + 1, body)]
        (directory / "data").mkdir(exist_ok=True)
        pd.DataFrame({"input_ids": rows}).to_parquet(directory / "data" / "train-00000-of-00001.parquet", index=False)
    elif repo == "HuggingFaceFW/fineweb":
        (directory / "data" / "CC-MAIN-2024-10").mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"text": documents, "id": [f"<urn:uuid:{i}>" for i in range(len(documents))]})
        frame.to_parquet(directory / "data" / "CC-MAIN-2024-10" / "000_00000.parquet", index=False)
    else:  # the Pile's layout: train/NN.jsonl with `text` and `meta`
        (directory / "train").mkdir(exist_ok=True)
        with open(directory / "train" / "00.jsonl", "w") as handle:
            for text in documents:
                handle.write(json.dumps({"text": text, "meta": {"pile_set_name": "stand-in"}}) + "\n")
    return directory


# -- all of it ---------------------------------------------------------------------------------------------------


def unreleased_dir(root: Path, spec: str) -> Path:
    """The local SAELens folder that plays the SAE a user would supply for an `unreleased:` case."""
    return root / "unreleased" / hashlib.sha256(spec.encode()).hexdigest()[:16]


def write_sae_stand_in(root: Path, spec: str, hook: str) -> Path:
    """A miniature SAE for a `wandb:` or `saelens:` spec, where and how that source keeps its files; for an
    `unreleased:` one, a local folder in Kissane's format (what a user would pass with --sae)."""
    parsed = parse_spec(spec)
    if parsed.scheme == "unreleased":
        directory = unreleased_dir(root, spec)
        write_sae(directory, spec, kissane_config(hook, "stand-in"), leftover_scaling_factor=True)
        return directory
    if parsed.scheme == "wandb":
        return write_wandb_sae(root / "artifacts", parsed.body, hook)
    if parsed.scheme == "saelens":
        return write_release_sae(root / "hub", parsed.body)
    raise KeyError(f"the rehearsal has no stand-in for SAE source {spec!r} (wandb:, saelens:, unreleased: only)")


def build_stand_ins(root: Path, needs: Needs) -> None:
    """Write every stand-in of `needs` under `root` (hub/, artifacts/, datasets/); replaces what was there."""
    for sub in ("hub", "artifacts", "datasets"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for repo in sorted(needs.repos):
        save_miniature(miniature(repo), snapshot_dir(root / "hub", repo), seed=_seed(repo))
    for spec, hook in sorted(needs.saes.items()):
        write_sae_stand_in(root, spec, hook)
    for repo in sorted(needs.datasets):
        write_dataset(root / "datasets", repo)
