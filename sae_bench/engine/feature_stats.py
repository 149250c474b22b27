"""Per feature, streamed in the evaluation's own pass: its latent-scaling coefficient against the model's activations
and the positions where it fires most (a streaming top-k), for `sae-bench explain` and the report's feature tables.

Latent scaling (Minder et al. 2025, arXiv 2504.02922): the β that best scales feature j's decoder direction d_j,
at its activation f_j(t), onto the activation x_t, least squares over the reconstructed positions:
    latent_scaling_beta   β_j = Σ_t f_j(t)·⟨x_t, d_j⟩ / (‖d_j‖² · Σ_t f_j(t)²)     (undefined where j never fires)
    latent_scaling_ratio  ν_j = β_j(other model) / β_j(own model)                  (`FeatureShift`)
x is the SAE's input (the activation times the case's scaling factor, as the SAE sees it), d_j the decoder row;
Σ_t f_j(t)·x_t is a float32 matrix product over the batch's tokens (the SAE's own precision) and Σ_t f_j(t)² a
float32 batch sum of positive terms (a float64 reduction took 12× as long); the dot with d_j and the sums over
batches are float64. On the model the SAE was trained on, β is the share of the feature's claimed magnitude that
the activations carry along its direction; ν < 1 says the feature fires on the other model where its direction is
weaker, ν > 1 stronger, ν < 0 against it. Minder et al. also fit β against the reconstruction without the latent
and against the reconstruction error, to tell a crosscoder's shared latents from model-specific ones; one SAE
spliced into two models has one decoder and nothing to tell apart, so only β against x is computed.

The top-k keeps, per feature, the k largest activations over the pass and where they were (sequence, position);
merged batch by batch, so memory is k·d_sae whatever the number of tokens: only activations above a feature's
current k-th value are gathered (a few per batch once the first batch has filled it; the first batch gives each
feature's own top k), so no (tokens, d_sae) sort runs. A tie with a kept activation keeps the kept one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MIN_FIRINGS = 10
"""ν ranks a feature only where it fired on at least this many positions on each model: a β fitted to a handful of
near-zero activations is noise (on the zoo, single firings of 1e-4 gave β of 10^4)."""
TOP_K = 5
"""Top-activating positions kept per feature."""
CONTEXT_BEFORE, CONTEXT_AFTER = 10, 3
"""Tokens shown before and after the activating token in a context window."""


@dataclass(frozen=True)
class FeatureSummary:
    """Per feature, over one evaluation's reconstructed positions."""

    beta: Tensor
    """latent_scaling_beta, (d_sae,) float64; NaN where the feature never fired (or its decoder row is zero)."""
    fired: Tensor
    """(d_sae,) int64: the positions where the feature fired (activation > 0)."""
    top_values: Tensor
    """(d_sae, k) float32, largest first; 0 where the feature fired on fewer than k positions."""
    top_sequence: Tensor
    """(d_sae, k) int64: the row (in the case's token set) of each top value; −1 where there is none."""
    top_position: Tensor
    """(d_sae, k) int64: its position in the row; −1 where there is none."""

    def top(self, feature: int) -> list[tuple[float, int, int]]:
        """(activation, sequence, position) of the feature's top activations, largest first, firing ones only."""
        rows = zip(
            self.top_values[feature].tolist(),
            self.top_sequence[feature].tolist(),
            self.top_position[feature].tolist(),
            strict=True,
        )
        return [(value, seq, pos) for value, seq, pos in rows if value > 0]


class FeatureStats:
    """Streams `FeatureSummary` over the batches of a pass (`EvalConfig.feature_stats`)."""

    def __init__(self, decoder: Tensor, k: int = TOP_K):
        """decoder: the SAE's (d_sae, d_model) decoder rows (W_dec), read as the pass runs (no copy)."""
        d_sae = decoder.shape[0]
        self.decoder, self.k = decoder, k
        self.weighted_projection = torch.zeros(d_sae, dtype=torch.float64)
        self.squared_activation = torch.zeros(d_sae, dtype=torch.float64)
        self.top_values = torch.zeros(d_sae, k)
        self.top_sequence = torch.full((d_sae, k), -1, dtype=torch.long)
        self.top_position = torch.full((d_sae, k), -1, dtype=torch.long)
        self.merged = False

    def update(self, sae_in: Tensor, feature_acts: Tensor, where: Tensor) -> None:
        """sae_in (n, d_model), feature_acts (n, d_sae), where (n, 2): each row's (sequence, position) in the case's
        token set."""
        if feature_acts.shape[0] == 0:
            return
        f = feature_acts.float()
        # Σ_t f_j(t)·⟨x_t, d_j⟩ = Σ_k (fᵀx)_jk·d_jk: one (d_sae, d_model) product, no (tokens, d_sae) temporary
        summed = (f.T @ sae_in.float()).double()
        self.weighted_projection += (summed * self.decoder.detach().double()).sum(-1).cpu()
        self.squared_activation += (f * f).sum(0).double().cpu()  # positive terms: a float32 batch sum loses ~1e-7
        self._merge_top(f, where)

    def _merge_top(self, f: Tensor, where: Tensor) -> None:
        """Merge the batch's activations into each feature's top k: only those above the feature's current k-th
        value can enter (after the first batches, a few per batch), merged with the kept ones by a stable sort."""
        d_sae, k = self.top_values.shape
        if not self.merged:  # the first batch: every firing activation would be a candidate, so its own top k
            top = f.T.contiguous().topk(min(k, f.shape[0]), dim=1)  # along rows: 1.5× faster than along tokens
            t = top.indices.flatten()
            j = torch.arange(d_sae, device=f.device)[:, None].expand_as(top.indices).flatten()
            firing = top.values.flatten() > 0
            t, j = t[firing], j[firing]
        else:
            t, j = (f > self.top_values[:, -1].to(f.device)).nonzero(as_tuple=True)
        self.merged = True
        if t.numel() == 0:
            return
        where = where.to(f.device)
        features = torch.cat([torch.arange(d_sae).repeat_interleave(k), j.cpu()])
        values = torch.cat([self.top_values.flatten(), f[t, j].cpu()])
        sequence = torch.cat([self.top_sequence.flatten(), where[t, 0].cpu()])
        position = torch.cat([self.top_position.flatten(), where[t, 1].cpu()])
        order = values.argsort(descending=True, stable=True)  # largest first; kept entries before equal new ones
        order = order[features[order].argsort(stable=True)]  # then by feature, keeping that order within each
        by_feature = features[order]
        rank = torch.arange(len(order)) - torch.searchsorted(by_feature, torch.arange(d_sae))[by_feature]
        kept, rows = order[rank < k], (by_feature[rank < k], rank[rank < k])
        self.top_values, self.top_sequence, self.top_position = (
            torch.zeros(d_sae, k),
            torch.full((d_sae, k), -1),
            torch.full((d_sae, k), -1),
        )
        self.top_values[rows], self.top_sequence[rows], self.top_position[rows] = (
            values[kept],
            sequence[kept],
            position[kept],
        )
        empty = self.top_values <= 0
        self.top_sequence[empty], self.top_position[empty] = -1, -1

    def compute(self, fired: Tensor) -> FeatureSummary:
        """The summary, with β's denominator taken from the decoder rows' squared norms (float64); fired: (d_sae,)
        the positions where each feature fired, as the evaluation's density counted them."""
        norms = self.decoder.detach().double().pow(2).sum(-1).cpu()
        denominator = norms * self.squared_activation
        beta = torch.where(denominator > 0, self.weighted_projection / denominator, math.nan)
        return FeatureSummary(beta, fired.long(), self.top_values, self.top_sequence, self.top_position)


@dataclass(frozen=True)
class FeatureShift:
    """One SAE's latent scaling on its own model and on another: ν = β(other) / β(own), per feature."""

    own: FeatureSummary
    other: FeatureSummary

    @property
    def ratio(self) -> Tensor:
        """latent_scaling_ratio ν, (d_sae,) float64; NaN where either β is undefined or β(own) is 0."""
        own, other = self.own.beta, self.other.beta
        return torch.where(own != 0, other / own, math.nan)

    @property
    def supported(self) -> Tensor:
        """(d_sae,) bool: ν is ranked here, the feature firing on `MIN_FIRINGS` positions or more of each model."""
        return (self.own.fired >= MIN_FIRINGS) & (self.other.fired >= MIN_FIRINGS) & torch.isfinite(self.ratio)

    def median(self) -> tuple[int, float | None]:
        """(how many features are supported, the median ν over them, the lower middle value for an even count
        (torch.median); None when none is)."""
        nu = self.ratio[self.supported]
        return int(nu.numel()), float(nu.median()) if nu.numel() else None

    def top(self, k: int = 10) -> list[dict[str, float | int]]:
        """The k features whose scaling moved most, by |log10 |ν||, largest first (ties by index), among those that
        fired on `MIN_FIRINGS` positions or more on each model; a sign change (ν < 0) ranks by its magnitude and
        shows as a negative ν."""
        ratio = self.ratio
        moved = ratio.abs().log10().abs()
        defined = torch.isfinite(moved) & self.supported
        order = torch.where(defined, moved, -1.0).sort(descending=True, stable=True).indices
        picked = [i for i in order[:k].tolist() if bool(defined[i])]
        return [
            {"feature": i, "beta_own": float(self.own.beta[i]), "beta_other": float(self.other.beta[i]),
             "nu": float(ratio[i])}
            for i in picked
        ]  # fmt: skip


@dataclass(frozen=True)
class FeatureSide:
    """One SAE's features on one model: densities, latent scaling, top activations, and the rows they point into."""

    density: Tensor
    summary: FeatureSummary
    tokens: Tensor
    """The case's token rows, (n_sequences, pos), that `summary.top_sequence` / `top_position` index."""
    decode: Callable[[list[int]], str] | None
    """The model's tokenizer's decode (None: contexts show token ids)."""

    def contexts(self, feature: int, n: int) -> list[str]:
        """Up to n windows where the feature fires most, largest first, each with its activation."""
        return [
            f"{value:.3g}: {context(self.tokens, seq, pos, self.decode)}"
            for value, seq, pos in self.summary.top(feature)[:n]
        ]


def context(tokens: Tensor, sequence: int, position: int, decode) -> str:
    """The window of `tokens[sequence]` around `position`, the activating token in ⟦ ⟧; `decode` maps a list of ids to
    text (a tokenizer's decode), or None to show the ids."""
    row = tokens[sequence].tolist()
    start, stop = max(0, position - CONTEXT_BEFORE), min(len(row), position + 1 + CONTEXT_AFTER)
    show = (lambda ids: " ".join(map(str, ids))) if decode is None else decode
    before, token, after = show(row[start:position]), show(row[position : position + 1]), show(row[position + 1 : stop])
    text = f"{'…' if start > 0 else ''}{before}⟦{token}⟧{after}{'…' if stop < len(row) else ''}"
    return text.replace("\n", "⏎")
