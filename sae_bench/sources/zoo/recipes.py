"""What the zoo holds and how each artifact is made: architectures, training schedules, SAE specs.

The recipes say what each fine-tune *is* (mild chat tuning, a domain fine-tune, a heavy high-drift tune); they were
chosen before measuring and are not tuned towards any transfer result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sae_bench.sources.zoo.training_specs import SaeTrainingSpec, TrainingSchedule

CONTEXT = 128
VOCAB_SIZE = 2048
HOOK = "blocks.2.hook_resid_pre"  # the middle layer of four, as the seeds took a middle layer
D_MODEL = 128


@dataclass(frozen=True)
class ModelRecipe:
    """One training run; `outputs` maps optimiser step → the model name saved at that step."""

    family: str
    outputs: dict[int, str]
    parent: str | None  # model this run starts from (None: fresh initialisation)
    data: str  # "pretrain" | "instructions" | "domain"
    schedule: TrainingSchedule
    description: str


@dataclass(frozen=True)
class SaeRecipe:
    """One SAE: trained from scratch on `model`, or (`finetune_of`) a base SAE fine-tuned with Kissane's recipe."""

    family: str
    name: str
    model: str
    spec: SaeTrainingSpec
    description: str
    finetune_of: str | None = None
    finetune_tokens: int = 0
    release: str = ""
    """The release this SAE belongs to (its name is `RELEASE/ID`); empty for the zoo's single SAEs."""


@dataclass(frozen=True)
class Family:
    """An architecture and its base → fine-tune pairs."""

    name: str
    architecture: str  # "mistral" | "qwen2" | "gemma"
    seed: int
    models: tuple[ModelRecipe, ...]
    saes: tuple[SaeRecipe, ...]
    pairs: tuple[tuple[str, str], ...]  # (base, fine-tuned) model names
    dose_series: tuple[str, ...] = field(default=())


def hf_config(architecture: str):
    """The HF config of a tiny model of `architecture` (4 layers, d_model 128, vocabulary 2048)."""
    from transformers import GemmaConfig, MistralConfig, Qwen2Config  # noqa: PLC0415 - transformers loads torch, and this module stays light (sae-bench cases, the rehearsal's set-up)

    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=D_MODEL,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=2 * CONTEXT,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    if architecture == "mistral":
        return MistralConfig(**common, num_key_value_heads=2, sliding_window=None, tie_word_embeddings=False)
    if architecture == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=2, use_sliding_window=False, tie_word_embeddings=False)
    if architecture == "gemma":
        return GemmaConfig(**common, num_key_value_heads=1, head_dim=32, hidden_activation="gelu_pytorch_tanh")
    raise ValueError(f"unknown zoo architecture {architecture!r}; known: mistral, qwen2, gemma")


def _pretrain(family: str, seed: int) -> ModelRecipe:
    return ModelRecipe(
        family,
        {800: "base"},
        None,
        "pretrain",
        TrainingSchedule(steps=800, lr=2e-3, warmup_steps=50, seed=seed),
        "pretrained from scratch on the prose and every other code file",
    )


def _base_sae_spec(seed: int) -> SaeTrainingSpec:
    return SaeTrainingSpec(
        hook=HOOK,
        d_sae=8 * D_MODEL,
        l1_coefficient=5.0,
        lr=1e-3,
        training_tokens=2_000_000,
        batch_size_tokens=1024,  # ~2000 optimiser steps: at 4096 tokens a batch, 489 steps left the SAEs undertrained
        seed=seed,
    )


def _sae(family: str, name: str, model: str, seed: int, description: str) -> SaeRecipe:
    return SaeRecipe(family, name, model, _base_sae_spec(seed), description)


def _modern_sae(family: str, name: str, model: str, seed: int, *, k: int = 0, target_l0: float = 0.0) -> SaeRecipe:
    """A TopK (`k`) or JumpReLU (`target_l0`) SAE with the base spec's width, tokens, batch and learning rate."""
    architecture = "topk" if k else "jumprelu"
    spec = replace(_base_sae_spec(seed), architecture=architecture, k=k, target_l0=target_l0, l1_coefficient=0.0)
    sparsity = f"k = {k}" if k else f"L0 steered to {target_l0:g} (quadratic L0 loss)"
    return SaeRecipe(family, name, model, spec, f"{architecture} SAE ({sparsity}) trained on {model} activations")


RELEASE_WIDTH, RELEASE_K, RELEASE_TOKENS = 512, 16, 1_000_000


def _release(family: str, release: str, model: str, n_layers: int, seed: int) -> tuple[SaeRecipe, ...]:
    """A release as Gemma Scope 2 lays one out: a TopK SAE at every layer's residual output (`layer_L`), trained on
    `model`; a PT release and an IT release of one recipe share their ids, as `-pt-res-all` and `-it-res-all` do."""
    recipes = []
    for layer in range(n_layers):
        spec = replace(
            _base_sae_spec(seed + layer),
            hook=f"blocks.{layer}.hook_resid_post",
            d_sae=RELEASE_WIDTH,
            architecture="topk",
            k=RELEASE_K,
            l1_coefficient=0.0,
            training_tokens=RELEASE_TOKENS,
        )
        description = f"{release}: TopK SAE (k = {RELEASE_K}) on {model} activations at layer {layer}'s output"
        recipes.append(SaeRecipe(family, f"{release}/layer_{layer}", model, spec, description, release=release))
    return tuple(recipes)


def _finetuned_base_sae(family: str, chat: str, seed: int) -> SaeRecipe:
    return SaeRecipe(
        family,
        "base-sae-ft",
        chat,
        _base_sae_spec(seed),
        f"base SAE fine-tuned on {chat} activations (Kissane recipe, 10% of the base SAE's tokens)",
        finetune_of="base-sae",
        finetune_tokens=200_000,
    )


_MILD_CHAT = dict(lr=3e-4, warmup_steps=5, decay="constant", batch_size=16)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "tiny-mistral",
            "mistral",
            seed=1,
            models=(
                _pretrain("tiny-mistral", 1),
                ModelRecipe(
                    "tiny-mistral",
                    {5: "dose-5", 20: "dose-20", 60: "instruct", 400: "dose-400"},
                    "base",
                    "instructions",
                    TrainingSchedule(steps=400, seed=11, **_MILD_CHAT),
                    "chat fine-tune at a constant mild rate; checkpoints at 5, 20, 60 (instruct) and 400 steps",
                ),
                ModelRecipe(
                    "tiny-mistral",
                    {300: "math"},
                    "base",
                    "domain",
                    TrainingSchedule(steps=300, lr=5e-4, warmup_steps=10, seed=12),
                    "domain fine-tune on held-back standard-library code (the MetaMath analogue)",
                ),
            ),
            saes=(
                _sae("tiny-mistral", "base-sae", "base", 101, "trained on base activations"),
                _sae("tiny-mistral", "instruct-sae", "instruct", 102, "trained on instruct activations"),
                _sae("tiny-mistral", "math-sae", "math", 103, "trained on math activations"),
                _finetuned_base_sae("tiny-mistral", "instruct", 104),
                # modern architectures (Gemma Scope: JumpReLU; Llama Scope / OpenAI: TopK), and a TopK L0 sweep
                _modern_sae("tiny-mistral", "base-topk", "base", 105, k=32),
                _modern_sae("tiny-mistral", "instruct-topk", "instruct", 106, k=32),
                _modern_sae("tiny-mistral", "base-jumprelu", "base", 107, target_l0=32),
                _modern_sae("tiny-mistral", "base-topk-k8", "base", 108, k=8),
                _modern_sae("tiny-mistral", "base-topk-k16", "base", 109, k=16),
                # two releases of one recipe (another seed each), PT (base) and IT (instruct) SAEs at every layer
                *_release("tiny-mistral", "release-a-pt", "base", 4, 1100),
                *_release("tiny-mistral", "release-a-it", "instruct", 4, 1200),
                *_release("tiny-mistral", "release-b-pt", "base", 4, 1300),
                *_release("tiny-mistral", "release-b-it", "instruct", 4, 1400),
            ),
            pairs=(("base", "instruct"), ("base", "math")),
            dose_series=("base", "dose-5", "dose-20", "instruct", "dose-400"),
        ),
        Family(
            "tiny-qwen2",
            "qwen2",
            seed=2,
            models=(
                _pretrain("tiny-qwen2", 2),
                ModelRecipe(
                    "tiny-qwen2",
                    {60: "chat"},
                    "base",
                    "instructions",
                    TrainingSchedule(steps=60, seed=21, **_MILD_CHAT),
                    "chat fine-tune at a constant mild rate, 60 steps",
                ),
            ),
            saes=(
                _sae("tiny-qwen2", "base-sae", "base", 201, "trained on base activations"),
                _sae("tiny-qwen2", "chat-sae", "chat", 202, "trained on chat activations"),
                _finetuned_base_sae("tiny-qwen2", "chat", 203),
            ),
            pairs=(("base", "chat"),),
        ),
        Family(
            "tiny-gemma",
            "gemma",
            seed=3,
            models=(
                _pretrain("tiny-gemma", 3),
                ModelRecipe(
                    "tiny-gemma",
                    {600: "it"},
                    "base",
                    "instructions",
                    TrainingSchedule(steps=600, lr=3e-3, warmup_steps=10, decay="constant", batch_size=32, seed=31),
                    "heavy chat fine-tune: ten times the mild rate, ten times as long (high weight drift)",
                ),
            ),
            saes=(
                _sae("tiny-gemma", "base-sae", "base", 301, "trained on base activations"),
                _sae("tiny-gemma", "it-sae", "it", 302, "trained on it activations"),
            ),
            pairs=(("base", "it"),),
        ),
    )
}


def model_names() -> list[str]:
    """Every zoo model as `family/name`."""
    return [f"{f.name}/{name}" for f in FAMILIES.values() for run in f.models for name in run.outputs.values()]


def sae_names() -> list[str]:
    """Every zoo SAE as `family/name` (a release's as `family/release/id`)."""
    return [f"{f.name}/{sae.name}" for f in FAMILIES.values() for sae in f.saes]


def release_ids(family: str, release: str) -> list[str]:
    """The ids of a zoo release (`layer_0` …), in layer order."""
    saes = [sae for sae in FAMILIES[family].saes if sae.release == release] if family in FAMILIES else []
    return [sae.name.removeprefix(f"{release}/") for sae in saes]
