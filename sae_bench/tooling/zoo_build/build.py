"""`sae-bench zoo build`: corpus → tokenizer → token data → models → SAEs → manifest, deterministically.

Same seed, same Python (the corpus is this install's standard library), same library versions ⇒ the same files
(weights are stored in float16). `only` rebuilds one family or artifact, reading what it starts from off disk.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sae_bench.errors import BadInput
from sae_bench.sources.loading import load_hf_directory
from sae_bench.sources.zoo import artifacts
from sae_bench.sources.zoo.recipes import (
    CONTEXT,
    FAMILIES,
    VOCAB_SIZE,
    Family,
    ModelRecipe,
    SaeRecipe,
    hf_config,
    model_names,
    sae_names,
)
from sae_bench.sources.zoo.tokenizer import chat_tokens, load_tokenizer, train_tokenizer
from sae_bench.sources.zoo.training_specs import kissane_finetune
from sae_bench.tooling.sae_training import finetune_sae, train_sae
from sae_bench.tooling.zoo_build.corpus import Corpus, build_corpus
from sae_bench.tooling.zoo_build.lm_training import pack_documents, pack_exchanges, train_causal_lm

HELDOUT_FIRST_ROWS = 256
"""The held-out rows the zoo shipped first (prose, then code); every case and expectation reads rows among them, so
the rows added after them (the rest of the held-out code) moved no value."""


def _versions() -> dict[str, str]:

    names = ("torch", "transformers", "tokenizers", "sae-lens", "transformer-lens", "datasets", "safetensors")
    return {
        "python": platform.python_version(),
        "torch_threads": str(torch.get_num_threads()),
        **{name: version(name) for name in names},
    }


def split_texts(corpus: Corpus) -> dict[str, list[str]]:
    """Pretraining text (prose + every other code file), the domain set (the other code files), held-out text."""
    code = corpus.split("code", held_out=False)
    return {
        "pretrain": [d.text for d in corpus.split("prose", held_out=False)] + [d.text for d in code[::2]],
        "domain": [d.text for d in code[1::2]],
        "heldout_prose": [d.text for d in corpus.split("prose", held_out=True)],
        "heldout_code": [d.text for d in corpus.split("code", held_out=True)],
    }


def heldout_rows(tokenizer, texts: dict[str, list[str]]) -> torch.Tensor:
    """Every held-out row the corpus gives, int16: the prose rows, then the code rows (1274 rows of BOS + 127
    tokens; the first HELDOUT_FIRST_ROWS of them are the rows the zoo first shipped, byte for byte)."""
    prose = pack_documents(tokenizer, texts["heldout_prose"], CONTEXT)
    code = pack_documents(tokenizer, texts["heldout_code"], CONTEXT)
    return torch.cat([prose, code]).to(torch.int16).contiguous()


def held_out_instructions(tokenizer, corpus: Corpus) -> dict[str, torch.Tensor]:
    """Held-out chat exchanges, one per row, right-padded: ids, where the reply starts, and the length."""
    pairs = corpus.split("instructions", held_out=True)
    ids = torch.full((len(pairs), CONTEXT), tokenizer.pad_token_id, dtype=torch.int16)
    prompt_length = torch.zeros(len(pairs), dtype=torch.int16)
    length = torch.zeros(len(pairs), dtype=torch.int16)
    for row, pair in enumerate(pairs):
        tokens, start = chat_tokens(tokenizer, pair.user, pair.assistant)
        tokens = tokens[:CONTEXT]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int16)
        prompt_length[row], length[row] = min(start, CONTEXT), len(tokens)
    return {"input_ids": ids, "prompt_length": prompt_length, "length": length}


class ZooBuilder:
    """Builds the zoo into `root`, one artifact at a time, recording each step for the manifest."""

    def __init__(self, root: Path):
        self.root = root
        self.corpus = build_corpus()
        self.texts = split_texts(self.corpus)
        self.record: dict[str, Any] = {"models": {}, "saes": {}}
        self._rows: dict[str, torch.Tensor] = {}

    # -- tokenizer and data -------------------------------------------------------------------------------------
    def build_tokenizer_and_data(self) -> None:
        tokenizer = train_tokenizer(self.texts["pretrain"], VOCAB_SIZE)
        tokenizer.save_pretrained(self.root / "tokenizer")
        tokenizer = load_tokenizer(self.root / "tokenizer")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        save_file({"input_ids": heldout_rows(tokenizer, self.texts)}, self.root / "data" / "heldout.safetensors")
        save_file(
            held_out_instructions(tokenizer, self.corpus), self.root / "data" / "instructions-heldout.safetensors"
        )

    @property
    def tokenizer(self):
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = load_tokenizer(self.root / "tokenizer")
        return self._tokenizer

    def rows(self, data: str) -> torch.Tensor:
        """Training rows of `data` ("pretrain", "domain", "instructions"), packed once per build."""
        if data not in self._rows:
            if data == "instructions":
                pairs = self.corpus.split("instructions", held_out=False)
                self._rows[data] = pack_exchanges(self.tokenizer, pairs, CONTEXT)
            else:
                self._rows[data] = pack_documents(self.tokenizer, self.texts[data], CONTEXT)
        return self._rows[data]

    # -- models -------------------------------------------------------------------------------------------------
    def model_dir(self, family: str, name: str) -> Path:
        return self.root / "models" / family / name

    def _initial_model(self, family: Family, run: ModelRecipe):
        from transformers import AutoModelForCausalLM  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        if run.parent is None:
            torch.manual_seed(family.seed)
            return AutoModelForCausalLM.from_config(hf_config(family.architecture), dtype=torch.float32)
        return AutoModelForCausalLM.from_pretrained(self.model_dir(family.name, run.parent), dtype=torch.float32)

    def build_model_run(self, family: Family, run: ModelRecipe) -> None:
        model = self._initial_model(family, run)
        saved: dict[int, str] = {}

        def save_checkpoint(step: int, trained) -> None:
            if step in run.outputs:
                stored = copy.deepcopy(trained).to(torch.float16)
                stored.save_pretrained(self.model_dir(family.name, run.outputs[step]), safe_serialization=True)
                saved[step] = run.outputs[step]

        rows = self.rows(run.data)
        log = train_causal_lm(
            model,
            rows,
            run.schedule,
            pad_token_id=self.tokenizer.pad_token_id,
            on_step=save_checkpoint,
            description=f"{family.name}/{run.outputs[run.schedule.steps]}",
        )
        tokens_per_step = log.tokens_seen / max(1, run.schedule.steps)
        print(
            f"{family.name}: {run.description}: train loss {_mean(log.losses[:10]):.3f} → "
            f"{_mean(log.losses[-10:]):.3f} in {log.wall_s:.0f} s",
            flush=True,
        )
        for step, name in saved.items():
            self.record["models"][f"{family.name}/{name}"] = {
                "architecture": family.architecture,
                "parent": None if run.parent is None else f"{family.name}/{run.parent}",
                "data": run.data,
                "data_rows": len(rows),
                "schedule": asdict(run.schedule),
                "step": step,
                "tokens_seen": round(tokens_per_step * step),
                "final_train_loss": _mean(log.losses[max(0, step - 10) : step]),
                "run_wall_s": round(log.wall_s, 1),
                "description": run.description,
            }

    # -- SAEs ---------------------------------------------------------------------------------------------------
    def build_sae(self, family: Family, recipe: SaeRecipe) -> None:
        from sae_lens import TrainingSAE  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        model = load_hf_directory(self.model_dir(family.name, recipe.model), tokenizer=self.tokenizer)
        model_spec = f"zoo:{family.name}/{recipe.model}"
        rows = self.rows("pretrain")
        if recipe.finetune_of is None:
            spec_used = recipe.spec
            trained = train_sae(model, rows, recipe.spec, model_name=model_spec)
        else:
            base_name = f"{family.name}/{recipe.finetune_of}"
            base_dir = self.root / "saes" / family.name / recipe.finetune_of
            base = TrainingSAE.load_from_disk(base_dir, dtype="float32")
            base_factor = self.record["saes"].get(base_name) or _manifest_entry(self.root, "saes", base_name)
            trained = finetune_sae(
                base,
                base_factor["scaling_factor"],
                model,
                rows,
                recipe.spec,
                recipe.finetune_tokens,
                model_name=model_spec,
            )
            spec_used = kissane_finetune(recipe.spec, recipe.finetune_tokens)
        out = self.root / "saes" / family.name / recipe.name
        trained.sae.to(dtype=torch.float16).save_inference_model(out)
        canonical_sae_config(out / "cfg.json", model_spec)
        self.record["saes"][f"{family.name}/{recipe.name}"] = {
            "model": f"{family.name}/{recipe.model}",
            "hook": recipe.spec.hook,
            "spec": asdict(spec_used),
            "finetune_of": None if recipe.finetune_of is None else f"{family.name}/{recipe.finetune_of}",
            "finetune_tokens": recipe.finetune_tokens or None,
            "scaling_factor": trained.scaling_factor,
            "steps": trained.steps,
            "tokens_seen": trained.tokens_seen,
            "wall_s": round(trained.wall_s, 1),
            "description": recipe.description,
        }

    # -- manifest -----------------------------------------------------------------------------------------------
    def write_manifest(self, started: float, only: str | None = None) -> None:
        path = self.root / artifacts.MANIFEST
        manifest = json.loads(path.read_text()) if path.is_file() else {"models": {}, "saes": {}}
        manifest["models"].update(self.record["models"])
        manifest["saes"].update(self.record["saes"])
        manifest.pop("last_build_wall_s", None)
        manifest.update(
            {
                "format": 1,
                "corpus": {
                    "sha256": self.corpus.sha256,
                    "source": "pydoc_data.topics and the standard library of this Python install",
                    "documents": {kind: len(getattr(self.corpus, kind)) for kind in ("prose", "code", "instructions")},
                },
                "tokenizer": {"vocab_size": VOCAB_SIZE, "kind": "byte-level BPE (tokenizers)"},
                "context": CONTEXT,
                "data": {
                    "heldout": "held-out prose rows, then held-out code rows: BOS + 127 tokens each (1274 rows; "
                    "the first 256 as first shipped)",
                    "instructions-heldout": "held-out chat exchanges, one per row, right-padded",
                },
                "families": {f.name: {"architecture": f.architecture, "pairs": f.pairs} for f in FAMILIES.values()},
                "versions": _versions(),
                "last_build": {"only": only, "wall_s": round(time.perf_counter() - started, 1)},
                "files": artifacts.list_files(self.root),
            }
        )
        path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def canonical_sae_config(path: Path, model_spec: str) -> None:
    """Rewrite a saved SAE's cfg.json with sorted keys and the zoo spec as its model, so that the same training
    gives the same bytes (SAELens's key order differs between fresh and resumed SAEs; its model name is a path)."""
    config = json.loads(path.read_text())
    config["metadata"]["model_name"] = model_spec
    path.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _manifest_entry(root: Path, section: str, name: str) -> dict[str, Any]:
    return artifacts.read_manifest(root)[section][name]


def select(only: str | None) -> tuple[bool, list[tuple[Family, ModelRecipe]], list[tuple[Family, SaeRecipe]]]:
    """What `only` names: (rebuild tokenizer and data?, model runs, SAEs); None names everything."""
    runs = [(f, run) for f in FAMILIES.values() for run in f.models]
    saes = [(f, sae) for f in FAMILIES.values() for sae in f.saes]
    if only is None:
        return True, runs, saes
    if only == "data":
        return True, [], []
    if only == "saes":
        return False, [], saes
    if only in FAMILIES:
        return False, [(f, r) for f, r in runs if f.name == only], [(f, s) for f, s in saes if f.name == only]
    family, _, name = only.partition("/")
    chosen_runs = [(f, r) for f, r in runs if f.name == family and name in r.outputs.values()]
    chosen_saes = [(f, s) for f, s in saes if f.name == family and s.name == name]
    if not chosen_runs and not chosen_saes:
        raise BadInput(f"--only {only!r} names nothing; choose data, a family, or one of {model_names() + sae_names()}")
    return False, chosen_runs, chosen_saes


def _quiet_libraries() -> None:
    """Keep the build log to our own progress bars: no per-load bars or 'you passed a dataset' notes."""

    from transformers.utils import logging as transformers_logging  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    logging.getLogger("sae_lens").setLevel(logging.ERROR)


def build(root: Path, only: str | None = None) -> None:
    """Build (or, with `only`, rebuild part of) the zoo into `root`, then rewrite its manifest."""
    started = time.perf_counter()
    _quiet_libraries()
    root.mkdir(parents=True, exist_ok=True)
    builder = ZooBuilder(root)
    with_data, runs, saes = select(only)
    if with_data:
        builder.build_tokenizer_and_data()
    for family, run in runs:
        builder.build_model_run(family, run)
    for family, recipe in saes:
        builder.build_sae(family, recipe)
    builder.write_manifest(started, only)
