"""How far a fine-tune moved from its base: residual similarity on the same tokens, and per-layer weight drift.

Residual similarity (Kutsyk): per token cos(x_b, x_f) and ‖x_b − x_f‖ on raw activations, reduced globally and
per position. Weight drift: per parameter ‖W_f − W_b‖_F / ‖W_b‖_F, and per layer (and overall) the same ratio
over the layer's parameters taken together, √(Σ‖ΔW‖²) / √(Σ‖W_b‖²), so large tensors weigh by their size; on the HF
checkpoints' raw weights, which is what a fine-tune changes and what both backends can read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from sae_bench.engine.backends import Model, backend_of


@dataclass(frozen=True)
class ResidualSimilarity:
    """Base vs fine-tuned residuals at one hook, on the same tokens."""

    mean_cosine: float | None
    mean_distance: float | None
    n_tokens: int
    n_zero_norm: int
    """Tokens left out of the cosine mean because one of the two residuals is exactly zero."""
    per_position: pd.DataFrame
    """position, n_tokens, mean_cosine, mean_distance."""


@dataclass
class ResidualSimilarityStats:
    """Streams ResidualSimilarity over (batch, pos, d_model) pairs, in O(pos) memory."""

    n_positions: int
    cos_sum: Tensor = field(init=False)
    cos_count: Tensor = field(init=False)
    dist_sum: Tensor = field(init=False)
    dist_count: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.cos_sum, self.cos_count, self.dist_sum, self.dist_count = (
            torch.zeros(self.n_positions, dtype=torch.float64) for _ in range(4)
        )

    def update(self, x_base: Tensor, x_finetuned: Tensor, considered: Tensor) -> None:
        """x_*: (batch, pos, d_model); considered: (batch, pos) bool; pos may stop short of n_positions (a batch
        cut after its last considered position)."""
        xb, xf = x_base.detach().to(torch.float64), x_finetuned.detach().to(torch.float64)
        norm_b, norm_f = xb.norm(dim=-1), xf.norm(dim=-1)  # (batch, pos)
        distance = (xb - xf).norm(dim=-1)
        has_cos = considered & (norm_b > 0) & (norm_f > 0)
        cosine = (xb * xf).sum(-1) / torch.where(has_cos, norm_b * norm_f, torch.ones_like(norm_b))
        considered64, has_cos64 = considered.double(), has_cos.double()
        width = considered.shape[1]
        self.dist_sum[:width] += (distance * considered64).sum(0).cpu()
        self.dist_count[:width] += considered64.sum(0).cpu()
        self.cos_sum[:width] += (cosine * has_cos64).sum(0).cpu()
        self.cos_count[:width] += has_cos64.sum(0).cpu()

    def compute(self) -> ResidualSimilarity:
        n_tokens, n_cos = int(self.dist_count.sum()), int(self.cos_count.sum())
        seen = self.dist_count > 0
        per_position = pd.DataFrame(
            {
                "position": torch.arange(self.n_positions)[seen].numpy(),
                "n_tokens": self.dist_count[seen].long().numpy(),
                "mean_cosine": _ratio_or_nan(self.cos_sum, self.cos_count)[seen].numpy(),
                "mean_distance": (self.dist_sum[seen] / self.dist_count[seen]).numpy(),
            }
        )
        return ResidualSimilarity(
            mean_cosine=float(self.cos_sum.sum()) / n_cos if n_cos else None,
            mean_distance=float(self.dist_sum.sum()) / n_tokens if n_tokens else None,
            n_tokens=n_tokens,
            n_zero_norm=n_tokens - n_cos,
            per_position=per_position,
        )


def _ratio_or_nan(num: Tensor, den: Tensor) -> Tensor:
    """num / den, NaN (a pandas "missing") where den is 0; used only inside per-position tables."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


@dataclass(frozen=True)
class WeightDrift:
    """Relative weight change from a base model to its fine-tune."""

    per_tensor: pd.DataFrame
    """name, layer, norm_base, norm_diff, relative (relative is missing where the base tensor is all zeros)."""
    per_layer: pd.DataFrame
    """layer, relative: √(Σ‖ΔW‖²) / √(Σ‖W_b‖²) over the layer's tensors."""
    overall: float


def weight_drift(base: Model, finetuned: Model) -> WeightDrift:
    """Per-parameter, per-layer and overall relative Frobenius drift between two models of one architecture, on the
    weights a fine-tune changes: their HF checkpoints' raw weights, the same on either backend (definition 2 of
    `weight_drift`; version 1 read TransformerLens's processed weights on the hooked backend)."""
    return drift_between(backend_of(base).hf_weights(), backend_of(finetuned).hf_weights())


def drift_between(base: Iterable[tuple[str, str, Tensor]], finetuned: Iterable[tuple[str, str, Tensor]]) -> WeightDrift:
    """The drift arithmetic on two sets of (name, layer, tensor), matched by name."""
    params_b = {name: (layer, w) for name, layer, w in base}
    params_f = {name: w for name, _, w in finetuned}
    if params_b.keys() != params_f.keys():
        only_b, only_f = sorted(params_b.keys() - params_f.keys()), sorted(params_f.keys() - params_b.keys())
        raise ValueError(
            f"weight_drift: the models have different parameters (only in base: {only_b[:5]}, only in "
            f"fine-tune: {only_f[:5]}); they must share one architecture"
        )
    rows = []
    for name, (layer, w_b) in params_b.items():
        w_f = params_f[name]
        if w_b.shape != w_f.shape:
            raise ValueError(
                f"weight_drift: {name} has shape {tuple(w_b.shape)} in base, {tuple(w_f.shape)} in fine-tune"
            )
        wb64 = w_b.detach().to(torch.float64)
        norm_base = float(wb64.norm())
        norm_diff = float((w_f.detach().to(device=w_b.device, dtype=torch.float64) - wb64).norm())
        rows.append(
            {
                "name": name,
                "layer": layer,
                "norm_base": norm_base,
                "norm_diff": norm_diff,
                "relative": norm_diff / norm_base if norm_base > 0 else math.nan,
            }
        )
    per_tensor = pd.DataFrame(rows)
    squares = per_tensor.assign(base_sq=per_tensor.norm_base**2, diff_sq=per_tensor.norm_diff**2)
    grouped = squares.groupby("layer", sort=True)[["base_sq", "diff_sq"]].sum()
    per_layer = pd.DataFrame(
        {"layer": grouped.index, "relative": (grouped.diff_sq**0.5 / grouped.base_sq**0.5).to_numpy()}
    ).reset_index(drop=True)
    overall = math.sqrt(squares.diff_sq.sum()) / math.sqrt(squares.base_sq.sum())
    return WeightDrift(per_tensor=per_tensor, per_layer=per_layer, overall=overall)
