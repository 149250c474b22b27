"""Train or fine-tune an SAE (standard ReLU + L1, TopK or JumpReLU) with SAELens's own runner, on in-memory rows.

SAELens does the training; this module only fixes the settings the seeds used and records what was used:
activations are scaled to mean norm √d_model during training (Conerly et al.), by a factor this library estimates
(`sae_bench.engine.evaluate.estimate_scaling_factor`) and hands to SAELens, which folds it into the saved weights.
`kissane_finetune` is the recipe for a *fine-tuned base SAE*: the base SAE trained further on the chat model's
activations with the same learning rate and L1 coefficient, no L1 warm-up, batches of 256 tokens, linear warm-up
over the first 5% of steps and linear decay to zero over the last 20%.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens import (
    JumpReLUTrainingSAEConfig,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from transformer_lens import HookedTransformer

from sae_bench.engine.evaluate import estimate_scaling_factor
from sae_bench.sources.zoo.training_specs import SaeTrainingSpec, kissane_finetune


@dataclass(frozen=True)
class TrainedSae:
    """A trained SAE (scaling factor folded in, so it reads raw activations) and how it was made."""

    sae: object  # sae_lens.TrainingSAE
    scaling_factor: float
    steps: int
    tokens_seen: int
    wall_s: float


def runner_config(spec: SaeTrainingSpec, *, d_in: int, model_name: str, output_path: str | None):
    """The SAELens runner config for `spec`: offline, no wandb, no checkpoints, activations scaled to √d_in."""

    return LanguageModelSAERunnerConfig(
        sae=sae_config(spec, d_in),
        model_name=model_name,
        hook_name=spec.hook,
        model_from_pretrained_kwargs={},
        dataset_path="in-memory token rows",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=spec.context_size,
        training_tokens=spec.training_tokens,
        train_batch_size_tokens=spec.batch_size_tokens,
        store_batch_size_prompts=32,
        n_batches_in_buffer=spec.n_batches_in_buffer,
        lr=spec.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=spec.lr_warm_up_steps,
        lr_decay_steps=spec.lr_decay_steps,
        device="cpu",
        seed=spec.seed,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=output_path,
        verbose=False,
    )


def sae_config(spec: SaeTrainingSpec, d_in: int):
    """SAELens's training config for `spec`'s architecture (activations scaled to mean norm √d_in)."""

    common = dict(d_in=d_in, d_sae=spec.d_sae, normalize_activations="expected_average_only_in")
    if spec.architecture == "topk":
        return TopKTrainingSAEConfig(**common, k=spec.k)
    if spec.architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(**common, jumprelu_sparsity_loss_mode="quadratic", target_l0=spec.target_l0)
    return StandardTrainingSAEConfig(
        **common, l1_coefficient=spec.l1_coefficient, l1_warm_up_steps=spec.l1_warm_up_steps
    )


def _runner_with_scaling_factor(scaling_factor: float):
    """SAELens's runner, told the scaling factor instead of estimating its own (it keeps a preset one)."""

    class Runner(LanguageModelSAETrainingRunner):
        def run_trainer_with_interruption_handling(self, trainer):
            trainer.activation_scaler.scaling_factor = scaling_factor
            self.trainer = trainer
            return super().run_trainer_with_interruption_handling(trainer)

    return Runner


def train_sae(
    model: HookedTransformer,
    rows: torch.Tensor,
    spec: SaeTrainingSpec,
    *,
    init_sae=None,
    init_scaling_factor: float | None = None,
    output_path: str | Path | None = None,
    model_name: str | None = None,
) -> TrainedSae:
    """Train `init_sae` (or a fresh SAE) on `model`'s activations at `spec.hook` over `rows` (n, context) tokens.

    `init_scaling_factor` is the factor folded into `init_sae` when it was trained; it is unfolded first, so the
    SAE goes on training in the scaled space (mean norm √d) it was trained in. `model_name` is what the SAE's
    metadata records as its model (default: the model's own name, which for a local directory is its path).
    """
    from datasets import Dataset

    if rows.shape[1] < spec.context_size:
        raise ValueError(f"token rows hold {rows.shape[1]} tokens, fewer than context_size {spec.context_size}")
    needed = spec.n_batches_in_buffer * spec.context_size
    if needed < spec.batch_size_tokens:
        raise ValueError(
            f"n_batches_in_buffer × context_size = {needed} must be ≥ batch_size_tokens {spec.batch_size_tokens}"
        )
    if (init_sae is None) != (init_scaling_factor is None):
        raise ValueError("init_sae and init_scaling_factor go together: pass both or neither")
    torch.manual_seed(spec.seed)
    scaling_factor = estimate_scaling_factor(model, rows[: min(len(rows), 256)], spec.hook, batch_size=32)
    if init_sae is not None:
        # the given SAE reads raw activations: put it back in the scaled space the runner trains in
        init_sae.fold_activation_norm_scaling_factor(1.0 / init_scaling_factor)
        init_sae.cfg.normalize_activations = "expected_average_only_in"
    cfg = runner_config(
        spec,
        d_in=model.cfg.d_model,
        model_name=model_name or model.cfg.model_name,
        output_path=None if output_path is None else str(output_path),
    )
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})
    runner = _runner_with_scaling_factor(scaling_factor)(
        cfg, override_dataset=dataset, override_model=model, override_sae=init_sae
    )
    start = time.perf_counter()
    sae = runner.run()
    wall = time.perf_counter() - start
    trainer = runner.trainer
    return TrainedSae(sae, scaling_factor, trainer.n_training_steps, trainer.n_training_samples, wall)


def finetune_sae(
    sae,
    base_scaling_factor: float,
    model: HookedTransformer,
    rows: torch.Tensor,
    base_spec: SaeTrainingSpec,
    training_tokens: int,
    *,
    model_name: str | None = None,
) -> TrainedSae:
    """Kissane et al.'s fine-tuned base SAE: `sae` trained further on `model` with `kissane_finetune(base_spec)`.

    `base_scaling_factor` is the one the base SAE was trained with; the fine-tune scales the new model's
    activations by that model's own factor, so both runs see activations of mean norm √d.
    """

    if not isinstance(sae, TrainingSAE):
        raise TypeError(f"finetune_sae needs a sae_lens.TrainingSAE (TrainingSAE.load_from_disk), got {type(sae)}")
    spec = kissane_finetune(base_spec, training_tokens)
    return train_sae(model, rows, spec, init_sae=sae, init_scaling_factor=base_scaling_factor, model_name=model_name)
