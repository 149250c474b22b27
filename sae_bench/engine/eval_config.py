"""EvalConfig: how one SAE is evaluated on one model (read by the engine and recorded in its report)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_bench.engine.outliers import OutlierPolicy
from sae_bench.precision import OVERFLOW_RULES


@dataclass(frozen=True)
class EvalConfig:
    """How one SAE is evaluated on one model."""

    hook: str
    """TransformerLens hook the SAE reads and is spliced at: blocks.<L>.hook_resid_pre or hook_resid_post."""
    batch_size: int = 8
    """Sequences per forward pass."""
    scaling_factor: float | None = None
    """Activations are multiplied by this before the SAE and the reconstruction divided by it (None: raw)."""
    scaling_factor_source: str = "none"
    """Where the factor came from (the SAE's training, the evaluated model, a paper); recorded in the report."""
    outliers: OutlierPolicy | None = None
    """Outlier filter; None evaluates every position."""
    exclude_special_tokens: bool = False
    """Drop special-token positions (BOS, EOS, pad, …) from every metric and keep their activations clean."""
    special_token_ids: tuple[int, ...] | None = None
    """Ids treated as special; None takes them from the model's tokenizer (SAELens's definition)."""
    stack_continuations: bool = True
    """Run the three continuations as one 3×batch call (faster) rather than three calls (less memory)."""
    logit_rows_per_chunk: int | None = None
    """Predictions scored at once; None: as many as fit 2^21 logits per variant on CPU (8 MB in float32), 2^26 on
    a GPU."""
    device: str | None = None
    """Where to run; None keeps the model's device. The model and SAE are moved there."""
    dtype: torch.dtype | None = None
    """dtype the model runs in; None keeps its own. The SAE keeps its own dtype (the suite loads it in float32,
    `sae_bench.precision`), its input cast to it and its reconstruction cast back to the residual's; log-softmax, CE
    and KL are taken in float32 at least, and statistics always accumulate in float64."""
    overflow: str = OVERFLOW_RULES[0]
    """What a batch whose scores hold inf or NaN (a half-precision forward that overflowed) does to the metrics it
    feeds (`sae_bench.precision.OVERFLOW_RULES`): by default each becomes undefined, naming how many batches."""
    progress: bool = True
    """Show a progress bar over batches."""
    token_classes: bool = False
    """Also report every transfer metric per token class (`sae_bench.engine.token_classes`), in the same pass."""
    feature_stats: bool = False
    """Also report each feature's latent scaling and top-activating positions (`sae_bench.engine.feature_stats`), in
    the same pass."""
    pooled_per_token_ev: bool = False
    """Also report `explained_variance_per_token_pooled` (keeps every reconstructed token: chat-sized sets)."""

    def __post_init__(self) -> None:
        if self.overflow not in OVERFLOW_RULES:
            raise ValueError(f"EvalConfig: `overflow` is one of {OVERFLOW_RULES}, got {self.overflow!r}")
        if self.batch_size < 1:
            raise ValueError(f"EvalConfig: `batch_size` must be >= 1, got {self.batch_size}")
        if self.logit_rows_per_chunk is not None and self.logit_rows_per_chunk < 1:
            raise ValueError(f"EvalConfig: `logit_rows_per_chunk` must be >= 1, got {self.logit_rows_per_chunk}")
        if self.scaling_factor is not None and not self.scaling_factor > 0:
            raise ValueError(f"EvalConfig: `scaling_factor` must be positive, got {self.scaling_factor}")
        if self.outliers is not None and self.outliers.norm == "scaled" and self.scaling_factor is None:
            raise ValueError(
                "EvalConfig: an outlier threshold on scaled norms needs `scaling_factor`; give one, or set "
                "`outliers.norm='raw'`"
            )
