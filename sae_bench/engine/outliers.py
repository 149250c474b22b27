"""High-norm outlier positions: the norm scaling factor, outlier masks, and where the outliers sit.

Scaling factor s = √d_model / mean_t ‖x_t‖ (SAELens / Conerly et al.): s·x has mean norm √d_model.
An outlier is a position whose norm exceeds a threshold, on scaled norms ‖s·x_t‖ (Kissane: Mistral 200, Qwen 50,
Gemma 300) or on raw norms ‖x_t‖ (Kutsyk: Mistral 200). The two kinds of threshold are not comparable.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

EARLY_POSITION_LIMIT = 10
"""Positions below this count as "early" in the outlier breakdown."""


@dataclass(frozen=True)
class OutlierPolicy:
    """Which positions are outliers, and what happens to them."""

    threshold: float
    """Norm above which a position is an outlier."""
    norm: Literal["scaled", "raw"] = "scaled"
    """Threshold ‖s·x‖ (scaled, needs a scaling factor) or ‖x‖ (raw)."""
    count_in_ce: bool = True
    """Outlier positions always keep their clean activation in the spliced run; True keeps them in the CE/KL
    means (Kissane), False drops them from those means too."""

    def __post_init__(self) -> None:
        if not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise ValueError(f"OutlierPolicy: `threshold` must be a positive number, got {self.threshold}")
        if self.norm not in ("scaled", "raw"):
            raise ValueError(f"OutlierPolicy: `norm` must be 'scaled' or 'raw', got {self.norm!r}")


def _norms64(x: Tensor) -> Tensor:
    """Per-token L2 norms in float64, without materialising a float64 copy of x. (..., d) → (...)."""
    return torch.linalg.vector_norm(x.detach(), dim=-1, dtype=torch.float64)


def scaling_factor(mean_norm: float, d_model: int) -> float:
    """√d_model / mean_norm: the factor that gives activations a mean norm of √d_model."""
    if not (mean_norm > 0 and math.isfinite(mean_norm)):
        raise ValueError(f"scaling_factor: the mean activation norm must be positive and finite, got {mean_norm}")
    return math.sqrt(d_model) / mean_norm


@dataclass
class MeanNormStats:
    """Streams the mean per-token L2 norm (float64), for estimating the scaling factor batch by batch."""

    total: float = 0.0
    count: int = 0

    def update(self, x: Tensor) -> None:
        """x: (tokens, d_model)."""
        self.total += float(_norms64(x).sum())
        self.count += x.shape[0]

    def scaling_factor(self, d_model: int) -> float:
        if self.count == 0:
            raise ValueError("scaling_factor: no tokens were seen")
        return scaling_factor(self.total / self.count, d_model)


def outlier_mask(x: Tensor, policy: OutlierPolicy, scale: float | None) -> Tensor:
    """True where a position is an outlier under `policy`. x: (..., d_model) → (...) bool."""
    norms = _norms64(x)
    if policy.norm == "scaled":
        if scale is None:
            raise ValueError(
                "outlier_mask: a threshold on scaled norms needs a scaling factor; set one, or use norm='raw'"
            )
        norms = norms * scale
    return norms > policy.threshold


@dataclass(frozen=True)
class OutlierBreakdown:
    """How many evaluated positions were outliers, and which kinds (each outlier is counted once, in this order:
    BOS token, position < 10, newline token, other)."""

    n_positions: int
    n_outliers: int
    n_bos: int
    n_early_position: int
    n_newline: int
    n_other: int

    @property
    def fraction(self) -> float | None:
        return self.n_outliers / self.n_positions if self.n_positions else None

    def shares(self) -> dict[str, float | None]:
        """Share of the outliers that is BOS / early position / newline / other (None when there are none)."""
        kinds = {
            "bos": self.n_bos,
            "early_position": self.n_early_position,
            "newline": self.n_newline,
            "other": self.n_other,
        }
        return {k: (v / self.n_outliers if self.n_outliers else None) for k, v in kinds.items()}

    def to_row(self) -> dict[str, float | int | None]:
        row: dict[str, float | int | None] = {
            "outlier_positions": self.n_positions,
            "outlier_count": self.n_outliers,
            "outlier_fraction": self.fraction,
        }
        row.update({f"outlier_share_{k}": v for k, v in self.shares().items()})
        return row


@dataclass
class OutlierBreakdownStats:
    """Streams an OutlierBreakdown over (batch, pos) batches."""

    bos_token_id: int | None = None
    newline_token_ids: Tensor | None = None
    n_positions: int = 0
    n_outliers: int = 0
    n_bos: int = 0
    n_early_position: int = 0
    n_newline: int = 0

    def update(self, is_outlier: Tensor, tokens: Tensor, considered: Tensor) -> None:
        """is_outlier, tokens, considered: (batch, pos); only considered positions count."""
        outlier = is_outlier & considered
        self.n_positions += int(considered.sum())
        self.n_outliers += int(outlier.sum())
        is_bos = (tokens == self.bos_token_id) if self.bos_token_id is not None else torch.zeros_like(outlier)
        positions = torch.arange(tokens.shape[-1], device=tokens.device).expand_as(tokens)
        is_early = (positions < EARLY_POSITION_LIMIT) & ~is_bos
        if self.newline_token_ids is not None and self.newline_token_ids.numel():
            is_newline = torch.isin(tokens, self.newline_token_ids.to(tokens.device)) & ~is_bos & ~is_early
        else:
            is_newline = torch.zeros_like(outlier)
        self.n_bos += int((outlier & is_bos).sum())
        self.n_early_position += int((outlier & is_early).sum())
        self.n_newline += int((outlier & is_newline).sum())

    def compute(self) -> OutlierBreakdown:
        other = self.n_outliers - self.n_bos - self.n_early_position - self.n_newline
        return OutlierBreakdown(
            self.n_positions, self.n_outliers, self.n_bos, self.n_early_position, self.n_newline, other
        )


_NEWLINE_IDS: weakref.WeakKeyDictionary[object, Tensor] = weakref.WeakKeyDictionary()


def newline_token_ids(tokenizer: object) -> Tensor:
    """Ids of every vocabulary entry whose decoded text contains a newline (byte-level BPE, sentencepiece alike).

    Decoding the whole vocabulary takes seconds for a 256k vocabulary, so the result is kept per tokenizer object.
    """
    if tokenizer not in _NEWLINE_IDS:
        vocab_size = len(tokenizer)  # type: ignore[arg-type]
        texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])  # type: ignore[attr-defined]
        _NEWLINE_IDS[tokenizer] = torch.tensor([i for i, t in enumerate(texts) if "\n" in t], dtype=torch.long)
    return _NEWLINE_IDS[tokenizer]
