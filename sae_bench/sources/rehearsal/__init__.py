"""The hub tier, rehearsed offline (docs/design.md §9): every hub case through the real loaders, on miniature stand-ins.

`activate()` builds the stand-ins once (`stand_ins.py`), points the libraries at them through their own settings
(`HF_HUB_CACHE` with `HF_HUB_OFFLINE=1`, `WANDB_ARTIFACT_DIR`, `SAE_BENCH_DATASETS`) and keeps rollouts and the
stand-ins out of the user's caches (the suite itself reads Gemma Scope 2's safetensors headers from the HF cache,
`hub.read_cached_safetensors_shapes`, so those releases load offline). Three things are substituted inside a
library, at the narrowest point:
- TransformerLens takes Gemma's, Gemma 2's, Gemma 3's and Llama 3.1's configs from hard-coded full-size tables, not
  from the hub config; for a repo the rehearsal stands in for, `convert_hf_model_config` has the table's size fields
  (and Gemma 2's and 3's per-layer attention types and local window) replaced by the miniature's config
  (everything else, the weight conversion and processing included, is TransformerLens's own);
- SAELens sizes a Gemma Scope SAE from its repo and folder names; for a rehearsed release `d_in` and `d_sae` come
  from the stand-in's `params.npz` (`substitute_gemma_scope_sizes`);
- the case's token budget, context and batch size are scaled down in memory (`scaled_case`), never in the files.
A rehearsal proves plumbing and bookkeeping, never the published numbers: those need the real weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from filelock import FileLock

from sae_bench.cache import cache_dir
from sae_bench.cases.registry import CHAT_MASKS, SHIPPED_CASES, load_registry
from sae_bench.source_spec import source_spec

ROOT_ENV = "SAE_BENCH_REHEARSAL_ROOT"
_LIBRARIES_READING_ENV = ("huggingface_hub", "transformers", "datasets", "wandb")


@dataclass(frozen=True)
class RehearsalScale:
    """How far a rehearsal shrinks a hub case: rows, tokens per row, sequences per batch."""

    rows: int = 4
    context: int = 64
    chat_context: int = 192
    """Masked (chat) rows hold a prompt plus a 64-token rollout."""
    batch_size: int = 2


SCALE = RehearsalScale()


def scaled_case(case, scale: RehearsalScale = SCALE):
    """The hub case with its token budget, context and batch size scaled down (CPU is enough); an `unreleased:`
    SAE is played by a local stand-in folder, as a user would supply one with --sae."""
    if case.tier != "hub":
        return case
    context = min(case.context, scale.chat_context if case.mask in CHAT_MASKS else scale.context)
    sae = case.sae
    if source_spec(sae).scheme == "unreleased":
        # the rehearsal's ordering rule: stand_ins imports the hub libraries, which must load after activate()
        from sae_bench.sources.rehearsal.stand_ins import unreleased_dir  # noqa: PLC0415 - the rehearsal's ordering rule: these import the hub libraries, which its set-up must precede

        sae = str(unreleased_dir(stand_in_root(), sae))
    return replace(case, sae=sae, tokens=scale.rows * context, context=context, batch_size=scale.batch_size, gpu=False)


def stand_in_root() -> Path:
    """`$SAE_BENCH_REHEARSAL_ROOT`, else a folder of the suite's cache keyed by the stand-in recipe."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    return cache_dir() / "rehearsal" / _recipe_digest()


def _recipe_digest() -> str:
    """Changes whenever the stand-in code or the case files change, so a stale build is never reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")) + sorted(SHIPPED_CASES.glob("*.toml")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


_active: Path | None = None


def activate(root: Path | None = None, extra_saes: Sequence[str] = (), extra_hook: str | None = None) -> Path:
    """Build the stand-ins (once per recipe) and point every hub source at them; returns their root.

    `extra_saes`: further SAE specs to stand in for (a release gated with `sae-bench gate --rehearse`), reading
    `extra_hook` (the gated cases' hook); local folders and zoo specs are used as they are. Must run before
    huggingface_hub, transformers, datasets or wandb are imported: they read these settings once.
    """
    global _active
    in_cache = root is None and not os.environ.get(ROOT_ENV)
    root = (root or stand_in_root()).absolute()
    if _active is not None:
        if _active != root:
            raise RuntimeError(f"a rehearsal is already active on {_active}; cannot switch to {root}")
        if extra_saes:  # stand-ins for SAEs named after the settings took effect (the gate's new SAE)
            _build_once(root, extra_saes, extra_hook or "blocks.0.hook_resid_pre")
        return root
    loaded = [name for name in _LIBRARIES_READING_ENV if name in sys.modules]
    settings = environment(root)
    if loaded and any(os.environ.get(k) != v for k, v in settings.items()):
        raise RuntimeError(
            f"the rehearsal must be set up before {', '.join(loaded)} is imported (they read HF_HUB_CACHE and "
            "HF_HUB_OFFLINE once): pass --rehearse on the pytest command line, or call "
            "sae_bench.sources.rehearsal.activate() first"
        )
    os.environ.update(settings)
    for name in ("HF_TOKEN", "WANDB_API_KEY"):
        os.environ.pop(name, None)  # a rehearsal must never reach a hub, even with credentials at hand
    _build_once(root, extra_saes, extra_hook or "blocks.0.hook_resid_pre")
    if in_cache:
        _prune_stale_builds(root)
    substitute_hard_coded_configs()
    substitute_gemma_scope_sizes()
    _active = root
    return root


def environment(root: Path) -> dict[str, str]:
    """The settings that send every hub source to the stand-ins under `root`."""
    return {
        "HF_HUB_CACHE": str(root / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "WANDB_MODE": "offline",
        "WANDB_ARTIFACT_DIR": str(root / "artifacts"),
        "SAE_BENCH_DATASETS": str(root / "datasets"),
        "SAE_BENCH_CACHE": str(root / "cache"),
        ROOT_ENV: str(root),  # later calls (pytest.main in `sae-bench gate`, xdist workers) find the same root
    }


def _build_once(root: Path, extra_saes: Sequence[str], extra_hook: str) -> None:
    """Build under an exclusive lock, so pytest-xdist workers wait for one build and then share it."""
    # the rehearsal's ordering rule: stand_ins imports the hub libraries, which must load after activate()
    from sae_bench.sources.rehearsal.stand_ins import build_stand_ins, needs_of, write_sae_stand_in  # noqa: PLC0415 - the rehearsal's ordering rule: these import the hub libraries, which its set-up must precede

    root.mkdir(parents=True, exist_ok=True)
    done = root / "built.json"

    with FileLock(root / "build.lock", preserve_lock_file=True):
        if not done.is_file():
            needs = needs_of(load_registry(SHIPPED_CASES))
            build_stand_ins(root, needs)
            summary = {"repos": sorted(needs.repos), "saes": sorted(needs.saes), "datasets": sorted(needs.datasets)}
            done.write_text(json.dumps(summary, indent=2))
        for spec in extra_saes:
            if source_spec(spec).scheme in ("saelens", "wandb", "unreleased") and not Path(spec).is_dir():
                write_sae_stand_in(root, spec, hook=extra_hook)


STALE_AFTER_S = 7 * 24 * 3600


def _prune_stale_builds(current: Path) -> None:
    """Mark the current build used, and remove the cache's builds of other stand-in recipes (about 100 MB each)
    that no run has used for a week (a build in use by another checkout is left alone)."""

    (current / "built.json").touch()
    for sibling in current.parent.iterdir():
        marker = sibling / "built.json"
        if sibling != current and marker.is_file() and time.time() - marker.stat().st_mtime > STALE_AFTER_S:
            shutil.rmtree(sibling, ignore_errors=True)


HARD_CODED_ARCHITECTURES = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "LlamaForCausalLM")
"""Architectures whose TransformerLens config comes from a full-size table, not from the hub config."""


def substitute_hard_coded_configs() -> None:
    """Make TransformerLens size a rehearsed Gemma, Gemma 2, Gemma 3 or Llama 3.1 repo from the miniature's HF
    config instead of its full-size table (TransformerLens reads Mistral's and Qwen2's sizes from the hub config)."""
    import transformer_lens.loading_from_pretrained as loading  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    if getattr(loading.convert_hf_model_config, "_rehearsal", False):
        return
    original = loading.convert_hf_model_config

    def convert_hf_model_config(model_name: str, **kwargs):
        cfg = original(model_name, **kwargs)
        if cfg.get("original_architecture") not in HARD_CODED_ARCHITECTURES:
            return cfg
        from transformers import AutoConfig  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        # the rehearsal's ordering rule: miniatures imports transformers, which must load after activate()
        from sae_bench.sources.rehearsal.miniatures import MINIATURES  # noqa: PLC0415 - the rehearsal's ordering rule: these import the hub libraries, which its set-up must precede

        official = loading.get_official_model_name(model_name)
        if official not in MINIATURES:
            return cfg
        hf = AutoConfig.from_pretrained(official)
        sized = cfg | {
            "d_model": hf.hidden_size,
            "d_head": hf.head_dim,
            "n_heads": hf.num_attention_heads,
            "n_key_value_heads": hf.num_key_value_heads,
            "d_mlp": hf.intermediate_size,
            "n_layers": hf.num_hidden_layers,
            "d_vocab": hf.vocab_size,
            "rotary_dim": hf.head_dim,
        }
        if getattr(hf, "layer_types", None):  # Gemma 3: five local layers to one global, its own window
            sized["attn_types"] = ["global" if t == "full_attention" else "local" for t in hf.layer_types]
            sized["window_size"] = hf.sliding_window
        elif "attn_types" in cfg:  # Gemma 2 alternates local and global attention, one entry per layer
            sized["attn_types"] = (["local", "global"] * hf.num_hidden_layers)[: hf.num_hidden_layers]
        return sized

    convert_hf_model_config._rehearsal = True  # type: ignore[attr-defined]
    loading.convert_hf_model_config = convert_hf_model_config


def substitute_gemma_scope_sizes() -> None:
    """SAELens sizes a Gemma Scope SAE from its repo and folder names (d_in 2304 for `2b`, d_sae 16384 for
    `width_16k`); for a rehearsed release, size it from the stand-in's `params.npz` instead (everything else,
    the weights' conversion included, is SAELens's own)."""
    import sae_lens.loading.pretrained_sae_loaders as loaders  # noqa: PLC0415 - looked up when called: the rehearsal stands in for SAELens's registry and loaders

    original = loaders.get_gemma_2_config_from_hf
    if getattr(original, "_rehearsal", False):
        return

    def get_gemma_2_config_from_hf(repo_id, folder_name, device, force_download=False, cfg_overrides=None):
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        cfg = original(repo_id, folder_name, device, force_download, cfg_overrides)
        params = try_to_load_from_cache(repo_id, f"{folder_name}/params.npz")
        if isinstance(params, str) and Path(params).is_relative_to(stand_in_root()):
            with np.load(params) as weights:
                cfg["d_in"], cfg["d_sae"] = weights["W_enc"].shape
        return cfg

    get_gemma_2_config_from_hf._rehearsal = True  # type: ignore[attr-defined]
    loaders.get_gemma_2_config_from_hf = get_gemma_2_config_from_hf
    loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS["gemma_2"] = get_gemma_2_config_from_hf
