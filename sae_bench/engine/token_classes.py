"""Where a transfer's loss goes: every transfer metric per token class, streamed in the evaluation's own pass.

Each evaluated position belongs to one class, the first of `TOKEN_CLASSES` that applies: `outlier` (its norm is above
the case's outlier threshold: left un-spliced, so it has no reconstruction metrics, only scores), `first` (the row's
first position, or a BOS token anywhere), `special` (one of the tokenizer's special ids: chat-template markers, EOS,
pad), `newline` (a token whose text holds a newline), `user` and `assistant` (in a chat row, the user's text and the
reply: `ROLES`), `content` (everything else). A prediction (the logits at
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
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sae_bench.engine import metrics
from sae_bench.engine.definitions import TOKEN_CLASSES

ROLES = {"user": 1, "assistant": 2}
"""A chat row's role of each position ((rows, pos) int8, 0 elsewhere: the template, padding, a row without roles)."""
CLASS_METRICS = ("tokens", "l0", "mse", "explained_variance", "predictions", "ce_delta", "kl_spliced")


@dataclass(frozen=True)
class TokenClassifier:
    """The ids that decide a position's class (`TOKEN_CLASSES`)."""

    bos_id: int | None = None
    special_ids: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    newline_ids: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def classes(self, tokens: Tensor, outlier: Tensor, roles: Tensor | None = None) -> Tensor:
        """(batch, pos) int64: each position's class index into TOKEN_CLASSES; roles (batch, pos), where the rows
        are chat rows (`ROLES`)."""
        labels = torch.full_like(tokens, TOKEN_CLASSES.index("content"))
        if roles is not None:
            for role, code in reversed(ROLES.items()):
                labels = torch.where(roles.to(tokens.device) == code, TOKEN_CLASSES.index(role), labels)
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
    """Per class, the whole evaluation's own accumulators fed the class's positions: `metrics.ReconstructionStats`
    (l0, mse, explained_variance with the class's own mean) and a `metrics.TokenMean` each for ΔCE and KL."""

    reconstruction: dict[str, metrics.ReconstructionStats] = field(
        default_factory=lambda: {name: metrics.ReconstructionStats() for name in TOKEN_CLASSES}
    )
    ce_delta: dict[str, metrics.TokenMean] = field(
        default_factory=lambda: {name: metrics.TokenMean() for name in TOKEN_CLASSES}
    )
    kl: dict[str, metrics.TokenMean] = field(
        default_factory=lambda: {name: metrics.TokenMean() for name in TOKEN_CLASSES}
    )

    def add_reconstruction(self, classes: Tensor, x: Tensor, x_hat: Tensor, feature_acts: Tensor) -> None:
        """classes: (n,) of the reconstructed positions; x, x_hat: (n, d) in the SAE's input space."""
        active = metrics.count_active(feature_acts)  # counted once, not copied per class
        for index, rows in _rows_by_class(classes):
            self.reconstruction[TOKEN_CLASSES[index]].update(x[rows], x_hat[rows], active=active[rows])

    def add_scores(self, classes: Tensor, nll_clean: Tensor, nll_spliced: Tensor, kl_spliced: Tensor) -> None:
        """classes: (n,) of the counted predictions, in the order of their scores."""
        delta = nll_spliced.double() - nll_clean.double()
        for index, rows in _rows_by_class(classes):
            self.ce_delta[TOKEN_CLASSES[index]].update(delta[rows])
            self.kl[TOKEN_CLASSES[index]].update(kl_spliced[rows])

    def compute(self) -> dict[str, dict[str, float | None]]:
        """class → metric → value (None where the class has no positions, or the value is undefined or not
        finite)."""
        table = {}
        for name in TOKEN_CLASSES:
            reconstruction, ce_delta, kl = self.reconstruction[name], self.ce_delta[name], self.kl[name]
            values = {
                "l0": _defined(reconstruction.l0),
                "mse": _defined(reconstruction.mse),
                "explained_variance": _defined(reconstruction.explained_variance),
                "ce_delta": _defined(lambda m=ce_delta: m.compute("ce_delta")),
                "kl_spliced": _defined(lambda m=kl: m.compute("kl_spliced")),
            }
            counts = {"tokens": reconstruction.n_tokens, "predictions": ce_delta.count}
            table[name] = {metric: (counts | values)[metric] for metric in CLASS_METRICS}
        return table


def _rows_by_class(classes: Tensor) -> list[tuple[int, Tensor]]:
    """(class index, its rows as a mask) for each class present."""
    return [(int(index), classes == index) for index in classes.unique()]


def _defined(compute: Callable[[], float]) -> float | None:
    """compute(), or None where the metric is undefined (an empty class, variance at float32 rounding) or not
    finite."""
    try:
        value = compute()
    except metrics.UndefinedMetric:
        return None
    return value if math.isfinite(value) else None
