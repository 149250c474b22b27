"""SAELens's own eval functions run on our token tensors: the reference the engine is compared with."""

import torch
from sae_lens.evals import EvalConfig as SaeLensEvalConfig
from sae_lens.evals import get_sparsity_and_variance_metrics, run_evals
from sae_lens.training.activation_scaler import ActivationScaler


class FixedTokens:
    """The one method of SAELens's ActivationsStore its eval functions call, serving fixed tokens."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def get_batch_tokens(self, batch_size: int) -> torch.Tensor:
        assert batch_size == self.tokens.shape[0]
        return self.tokens


class FixedTokenBatches:
    """The ActivationsStore interface `sae_lens.evals.run_evals` uses, serving fixed rows a batch at a time in order
    (reset_input_dataset starts again from the first)."""

    def __init__(self, tokens: torch.Tensor, batch_size: int) -> None:
        self.tokens, self.store_batch_size_prompts, self.context_size = tokens, batch_size, tokens.shape[1]
        self.cursor = 0

    def get_batch_tokens(self, batch_size: int) -> torch.Tensor:
        batch = self.tokens[self.cursor : self.cursor + batch_size]
        assert batch.shape[0] == batch_size, "asked for more rows than the fixed tokens hold"
        self.cursor += batch_size
        return batch

    def reset_input_dataset(self) -> None:
        self.cursor = 0


def saelens_run_evals(model, sae, tokens: torch.Tensor, batch_size: int) -> dict:
    """SAELens's run_evals with the engine's metrics (CE, KL, L0, EV, densities) on the same rows in the same
    batches, nothing excluded."""
    n_batches = tokens.shape[0] // batch_size
    config = SaeLensEvalConfig(
        batch_size_prompts=batch_size,
        n_eval_reconstruction_batches=n_batches,
        compute_kl=True,
        compute_ce_loss=True,
        n_eval_sparsity_variance_batches=n_batches,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )
    store = FixedTokenBatches(tokens.to(model.cfg.device), batch_size)
    metrics, _ = run_evals(sae, store, model, ActivationScaler(), config, exclude_special_tokens=False)
    return metrics


def saelens_sparsity_and_variance(model, sae, tokens: torch.Tensor, *, densities: bool = False):
    """SAELens's L0 / EV / mse (and feature densities) over `tokens` as one batch, no special-token masking."""
    return get_sparsity_and_variance_metrics(
        sae,
        model,
        FixedTokens(tokens.to(model.cfg.device)),
        ActivationScaler(),
        n_batches=1,
        compute_l2_norms=False,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=densities,
        eval_batch_size_prompts=tokens.shape[0],
        model_kwargs={},
    )
