"""Where a transfer's loss goes: every transfer metric per token class, streamed in the evaluation's own pass.

Each evaluated position belongs to one class, the first of `TOKEN_CLASSES` that applies: `outlier` (its norm is above
the case's outlier threshold: left un-spliced, so it has no reconstruction metrics, only scores), `first` (the row's
first position, or a BOS token anywhere), `special` (one of the tokenizer's special ids: chat-template markers, EOS,
pad), `newline` (a token whose text holds a newline), `content` (everything else). A prediction (the logits at
position t, scoring token t + 1) belongs to position t's class: the splice at t is what changes it.

Per class, in float64, over the class's positions (reconstruction) or counted predictions (scores):
    l0                  Σ #{features > 0} / n
    mse                 Σ ‖x − x̂‖² / n                         (in the SAE's input space, as `mse`)
    explained_variance  1 − Σ ‖x − x̂‖² / Σ ‖x − x̄_class‖²       (x̄_class: the class's own mean; undefined
                                                             where that variance is float32 rounding)
    ce_delta            Σ (NLL_spliced − NLL_clean) / n_predictions
    kl_spliced          Σ KL(p_clean ‖ p_spliced) / n_predictions
Token-weighted, so the classes' sums add up to the whole evaluation's (l0, mse, ce_delta and kl_spliced of the
report are the token-weighted means of the classes', outliers aside for the reconstruction metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sae_bench.engine import metrics

TOKEN_CLASSES = ("outlier", "first", "special", "newline", "content")
CLASS_METRICS = ("tokens", "l0", "mse", "explained_variance", "predictions", "ce_delta", "kl_spliced")


@dataclass(frozen=True)
class TokenClassifier:
    """The ids that decide a position's class (`TOKEN_CLASSES`)."""

    bos_id: int | None = None
    special_ids: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    newline_ids: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def classes(self, tokens: Tensor, outlier: Tensor) -> Tensor:
        """(batch, pos) int64: each position's class index into TOKEN_CLASSES."""
        labels = torch.full_like(tokens, TOKEN_CLASSES.index("content"))
        rules = [
            ("newline", torch.isin(tokens, self.newline_ids.to(tokens.device))),
            ("special", torch.isin(tokens, self.special_ids.to(tokens.device))),
            ("first", self._first(tokens)),
            ("outlier", outlier.to(tokens.device)),
        ]
        for name, where in rules:  # later rules win: the order of TOKEN_CLASSES, reversed
            labels = torch.where(where, TOKEN_CLASSES.index(name), labels)
        return labels

    def _first(self, tokens: Tensor) -> Tensor:
        first = torch.zeros_like(tokens, dtype=torch.bool)
        first[:, 0] = True
        return first | (tokens == self.bos_id) if self.bos_id is not None else first


@dataclass
class TokenClassStats:
    """The per-class sums of one evaluation (float64), on the CPU."""

    d_model: int
    tokens: Tensor = field(init=False)
    active: Tensor = field(init=False)
    squared_error: Tensor = field(init=False)
    squared_norm: Tensor = field(init=False)
    mean: Tensor = field(init=False)
    centred: Tensor = field(init=False)
    """Per class Σ‖x − x̄_class‖², merged batch by batch (Chan et al.'s pairwise update, as `ReconstructionStats`)."""
    predictions: Tensor = field(init=False)
    ce_delta: Tensor = field(init=False)
    kl: Tensor = field(init=False)

    def __post_init__(self) -> None:
        k = len(TOKEN_CLASSES)
        for name in ("tokens", "active", "squared_error", "squared_norm", "centred", "predictions", "ce_delta", "kl"):
            setattr(self, name, torch.zeros(k, dtype=torch.float64))
        self.mean = torch.zeros(k, self.d_model, dtype=torch.float64)

    def add_reconstruction(self, classes: Tensor, x: Tensor, x_hat: Tensor, feature_acts: Tensor) -> None:
        """classes: (n,) of the reconstructed positions; x, x_hat: (n, d) in the SAE's input space."""
        classes, x64 = classes.cpu(), x.detach().double().cpu()
        error = (x64 - x_hat.detach().double().cpu()).pow(2).sum(dim=-1)
        for index in classes.unique().tolist():
            rows = x64[classes == index]
            n, batch_mean = rows.shape[0], rows.mean(dim=0)
            before, total = float(self.tokens[index]), float(self.tokens[index]) + n
            delta = batch_mean - self.mean[index]
            self.centred[index] += (
                float((rows - batch_mean).pow(2).sum()) + float(delta.pow(2).sum()) * before * n / total
            )
            self.mean[index] += delta * (n / total)
            self.tokens[index] = total
        self.active.index_add_(0, classes, (feature_acts > 0).sum(dim=-1, dtype=torch.float64).cpu())
        self.squared_error.index_add_(0, classes, error)
        self.squared_norm.index_add_(0, classes, x64.pow(2).sum(dim=-1))

    def add_scores(self, classes: Tensor, nll_clean: Tensor, nll_spliced: Tensor, kl_spliced: Tensor) -> None:
        """classes: (n,) of the counted predictions, in the order of their scores."""
        classes = classes.cpu()
        delta = (nll_spliced.double() - nll_clean.double()).cpu()
        self.predictions.index_add_(0, classes, torch.ones_like(delta))
        self.ce_delta.index_add_(0, classes, delta)
        self.kl.index_add_(0, classes, kl_spliced.double().cpu())

    def compute(self) -> dict[str, dict[str, float | None]]:
        """class → metric → value (None where the class has no positions, or the value is not finite)."""
        table = {}
        for index, name in enumerate(TOKEN_CLASSES):
            n, m = float(self.tokens[index]), float(self.predictions[index])
            values = {
                "tokens": int(n),
                "l0": float(self.active[index]) / n if n else None,
                "mse": float(self.squared_error[index]) / n if n else None,
                "explained_variance": self._explained_variance(index) if n else None,
                "predictions": int(m),
                "ce_delta": float(self.ce_delta[index]) / m if m else None,
                "kl_spliced": float(self.kl[index]) / m if m else None,
            }
            table[name] = {k: v if v is None or math.isfinite(v) else None for k, v in values.items()}
        return table

    def _explained_variance(self, index: int) -> float | None:
        """None where the class's activations have no variance beyond float32 rounding (every first position of a
        row holds the same BOS residual): the ratio would be noise."""
        try:
            sums = (float(self.squared_error[index]), float(self.centred[index]), float(self.squared_norm[index]))
            return metrics.explained_variance_from_sums(*sums, "explained_variance")
        except metrics.UndefinedMetric:
            return None
