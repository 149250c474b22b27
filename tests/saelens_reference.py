"""SAELens's own eval functions run on our token tensors: the reference the engine is compared with."""

import torch
from sae_lens.evals import get_sparsity_and_variance_metrics
from sae_lens.training.activation_scaler import ActivationScaler


class FixedTokens:
    """The one method of SAELens's ActivationsStore its eval functions call, serving fixed tokens."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def get_batch_tokens(self, batch_size: int) -> torch.Tensor:
        assert batch_size == self.tokens.shape[0]
        return self.tokens


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
