"""What decides a zoo training run, as plain data: the SAE spec and the language-model schedule. The zoo's recipes
are built from these, and the case registry reads the recipes, so this imports neither torch nor SAELens; the
training itself is `sae_bench.tooling`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

ARCHITECTURES = ("standard", "topk", "jumprelu")


@dataclass(frozen=True)
class SaeTrainingSpec:
    """Everything that decides an SAE training run besides the model and the tokens.

    `architecture`: `standard` (ReLU, L1 penalty `l1_coefficient`), `topk` (the `k` largest pre-activations, no
    sparsity penalty) or `jumprelu` (learned thresholds, an L0 penalty steered towards `target_l0`).
    """

    hook: str
    d_sae: int
    l1_coefficient: float
    lr: float
    training_tokens: int
    batch_size_tokens: int = 4096
    context_size: int = 128
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    l1_warm_up_steps: int = 0
    seed: int = 0
    n_batches_in_buffer: int = 64
    architecture: str = "standard"
    k: int = 0
    target_l0: float = 0.0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.architecture!r}; choose from {list(ARCHITECTURES)}")
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"a topk SAE needs 0 < k <= d_sae ({self.d_sae}), got k = {self.k}")
        if self.architecture == "jumprelu" and self.target_l0 <= 0:
            raise ValueError(f"a jumprelu SAE needs a positive target_l0, got {self.target_l0}")

    @property
    def steps(self) -> int:
        return self.training_tokens // self.batch_size_tokens


def kissane_finetune(base: SaeTrainingSpec, training_tokens: int, *, seed: int | None = None) -> SaeTrainingSpec:
    """The fine-tuning spec for a base SAE trained with `base` (Kissane et al.): same lr and L1, batch 256."""
    tuned = replace(base, training_tokens=training_tokens, batch_size_tokens=256, l1_warm_up_steps=0)
    steps = tuned.steps
    return replace(
        tuned,
        lr_warm_up_steps=round(0.05 * steps),
        lr_decay_steps=round(0.20 * steps),
        seed=base.seed if seed is None else seed,
    )


@dataclass(frozen=True)
class TrainingSchedule:
    """AdamW with linear warm-up, then cosine decay to 10% or a constant rate; seeded batch order."""

    steps: int
    lr: float
    warmup_steps: int
    decay: str = "cosine"  # "cosine" | "constant"
    batch_size: int = 32
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.decay not in ("cosine", "constant"):
            raise ValueError(f"decay must be 'cosine' or 'constant', got {self.decay!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimiser step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
