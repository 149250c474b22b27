"""Every tensor-only metric of docs/design.md §4, defined once: a pure function on whole tensors and a streaming
float64 accumulator that gives the same value whatever the batching.

Shapes: N tokens, d model dims, F SAE features, V vocabulary. All reductions run in float64. A metric that is
undefined on its input (zero variance, no tokens, clean loss not below the ablated loss) raises
`UndefinedMetric` with the reason: no function here returns NaN as a value. The one exception is
`pearson_per_feature`, whose per-feature tensor holds NaN for constant columns; `summarise_defined` is how every
summary drops them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

DENSITY_EPSILON = 1e-10
"""Added before log10 in log density and in the dead-feature activation error (Kutsyk), so dead maps to -10."""

CE_RECOVERED_MIN_GAP = 1e-4
"""Smallest ce_zero - ce_clean (nats) for which CE loss recovered is defined (Kissane's guard)."""

FLOAT32_ROUNDING = 64 * torch.finfo(torch.float32).eps
"""The rounding rule for denominators (≈ 7.6e-6). Model activations and logits come out of float32 forward passes,
so each carries a relative error of a few float32 epsilons that grows with depth; 64 epsilons bounds it with room.
A ratio is undefined (UndefinedMetric, never a huge number) when its denominator is not above this level:
- a sum of squared deviations (EV's variance): each element's rounding δ ≈ FLOAT32_ROUNDING·|x| alone contributes
  FLOAT32_ROUNDING² · Σ‖x‖², so the variance must exceed that;
- a difference of losses (CE recovered's ce_zero − ce_clean): it must exceed FLOAT32_ROUNDING · max(|ce_zero|,
  |ce_clean|) (and Kissane's CE_RECOVERED_MIN_GAP);
- a KL (kl_score's zero-ablation KL, in nats, a difference of log-normalisers of order one): it must exceed
  FLOAT32_ROUNDING itself.
`tests/engine/test_metrics.py` proves each on synthetic data whose denominator is pure rounding."""


class UndefinedMetric(ValueError):
    """A metric has no value on this input; the message says why."""


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def _check_tokens(name: str, *tensors: Tensor) -> None:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"{name}: inputs must have the same shape, got {sorted(shapes)}")
    if tensors[0].ndim != 2:
        raise ValueError(f"{name}: expected (tokens, dims) tensors, got shape {tuple(tensors[0].shape)}")
    if tensors[0].shape[0] == 0:
        raise UndefinedMetric(f"{name}: no tokens to evaluate")


# ---------------------------------------------------------------------------------------------------------------
# Pure reference functions (the public contract)
# ---------------------------------------------------------------------------------------------------------------


def l0(feature_acts: Tensor) -> float:
    """Mean over tokens of the number of features with activation > 0. feature_acts: (N, F)."""
    _check_tokens("l0", feature_acts)
    return float((feature_acts > 0).sum(dim=-1, dtype=torch.float64).mean())


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of the per-token summed squared error ‖x − x̂‖² (not per element). x, x_hat: (N, d)."""
    _check_tokens("mse", x, x_hat)
    return float((_f64(x) - _f64(x_hat)).pow(2).sum(dim=-1).mean())


def explained_variance_from_sums(
    sum_squared_error: float, total_sum_of_squares: float, raw_sum_of_squares: float, name: str
) -> float:
    """1 − SSE / SST, undefined when SST is at the rounding level of the activations (FLOAT32_ROUNDING)."""
    if total_sum_of_squares <= FLOAT32_ROUNDING**2 * raw_sum_of_squares:
        raise UndefinedMetric(
            f"{name}: the activations have zero variance over the evaluated tokens, within float32 rounding "
            f"(Σ‖x − x̄‖² = {total_sum_of_squares:.3g} against Σ‖x‖² = {raw_sum_of_squares:.3g}); the ratio would "
            "be noise"
        )
    return 1.0 - sum_squared_error / total_sum_of_squares


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """Centred, pooled: 1 − Σ_t‖x_t − x̂_t‖² / Σ_t‖x_t − x̄‖², x̄ the per-dimension mean over all tokens."""
    _check_tokens("explained_variance", x, x_hat)
    x64 = _f64(x)
    sse = float((x64 - _f64(x_hat)).pow(2).sum())
    sst = float((x64 - x64.mean(dim=0)).pow(2).sum())
    return explained_variance_from_sums(sse, sst, float(x64.pow(2).sum()), "explained_variance")


def explained_variance_flattened(x: Tensor, x_hat: Tensor) -> float:
    """R² over every scalar: 1 − Σ(x − x̂)² / Σ(x − m)², m one scalar mean of all elements (Kutsyk's torcheval
    `R2Score` on flattened activations; with a large mean direction it reads higher than `explained_variance`)."""
    _check_tokens("explained_variance_flattened", x, x_hat)
    x64 = _f64(x)
    sse = float((x64 - _f64(x_hat)).pow(2).sum())
    sst = float((x64 - x64.mean()).pow(2).sum())
    return explained_variance_from_sums(sse, sst, float(x64.pow(2).sum()), "explained_variance_flattened")


def _tokens_at_mean(x64: Tensor, distance_to_mean: Tensor) -> int:
    """Tokens whose squared distance to the mean (a per-token EV denominator) is at the rounding level of ‖x_t‖²
    (FLOAT32_ROUNDING's rule for a sum of squared deviations)."""
    return int((distance_to_mean <= FLOAT32_ROUNDING**2 * x64.pow(2).sum(dim=-1)).sum())


def explained_variance_per_token(x: Tensor, x_hat: Tensor) -> float:
    """One batch: mean over tokens of 1 − ‖x_t − x̂_t‖² / ‖x_t − x̄‖², x̄ the batch mean (Kissane / SAELens legacy)."""
    _check_tokens("explained_variance_per_token", x, x_hat)
    x64 = _f64(x)
    per_token_error = (x64 - _f64(x_hat)).pow(2).sum(dim=-1)
    distance_to_mean = (x64 - x64.mean(dim=0)).pow(2).sum(dim=-1)
    at_mean = _tokens_at_mean(x64, distance_to_mean)
    if at_mean:
        raise UndefinedMetric(
            f"explained_variance_per_token: {at_mean} of {len(x64)} tokens sit at the batch mean, within float32 "
            "rounding (a one-token batch always does); use explained_variance or larger batches"
        )
    return float((1.0 - per_token_error / distance_to_mean).mean())


def ce_loss_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """(ce_zero − ce_spliced) / (ce_zero − ce_clean): 1 when splicing costs nothing, 0 when it is as bad as zeros.

    Raises UndefinedMetric (a ValueError) when the clean loss is not at least CE_RECOVERED_MIN_GAP below the
    zero-ablation loss: the ratio then measures nothing (docs/design.md §8).
    """
    for name, value in (("ce_clean", ce_clean), ("ce_spliced", ce_spliced), ("ce_zero", ce_zero)):
        if not math.isfinite(value):
            raise UndefinedMetric(f"ce_loss_recovered: {name} is {value}")
    gap = ce_zero - ce_clean
    min_gap = max(CE_RECOVERED_MIN_GAP, FLOAT32_ROUNDING * max(abs(ce_zero), abs(ce_clean)))
    if gap < min_gap:
        raise UndefinedMetric(
            f"ce_loss_recovered: the clean loss ({ce_clean:.6g}) is not below the zero-ablation loss "
            f"({ce_zero:.6g}) by at least {min_gap:.3g}; the ratio is meaningless here"
        )
    return (ce_zero - ce_spliced) / gap


def kl_from_log_probs(log_p: Tensor, log_q: Tensor, p: Tensor | None = None) -> Tensor:
    """KL(p ‖ q) per row from log-probabilities (p = exp(log_p), passed in when already computed). (..., V) → (...)."""
    return ((log_p.exp() if p is None else p) * (log_p - log_q)).sum(dim=-1)


def softmax_and_log_normaliser(logits: Tensor) -> tuple[Tensor, Tensor]:
    """p = softmax(logits) and lse = log Σ_v exp(logits_v) per row, from one fused softmax: p_max = 1 / Σ exp(l − max)
    is at least 1/V, so lse = max − log p_max loses nothing. (n, V) → ((n, V), (n,))."""
    p = torch.softmax(logits, dim=-1)
    return p, logits.amax(dim=-1) - p.amax(dim=-1).log()


def next_token_nll_from_logits(logits: Tensor, lse: Tensor, targets: Tensor) -> Tensor:
    """NLL of each target, lse − logit of the target (= −log_softmax at the target). (n, V), (n,), (n,) → (n,)."""
    return lse - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def kl_from_logits(
    p: Tensor, lse_p: Tensor, logits_p: Tensor, logits_q: Tensor, lse_q: Tensor, *, overwrite_q: bool = False
) -> Tensor:
    """KL(p ‖ q) per row = Σ_v p_v (l_v − m_v) − lse(l) + lse(m), since log p = l − lse(l) and Σ p = 1: no
    log-probability tensor, one dot per row. The difference l − m is taken before the dot, so the logits' large
    common offset cancels exactly (the float32 error of the log-softmax route; separate dots lose ~100×).
    overwrite_q: write l − m into logits_q (which the caller no longer needs) instead of a new tensor. (n, V) → (n,)."""
    diff = torch.sub(logits_p, logits_q, out=logits_q) if overwrite_q else logits_p - logits_q
    return torch.linalg.vecdot(p, diff) - lse_p + lse_q


def kl_per_position(logits_clean: Tensor, logits_other: Tensor, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """KL(p_clean ‖ p_other) at each position, computed in `dtype`. logits: (..., V) → (...)."""
    if logits_clean.shape != logits_other.shape:
        raise ValueError(
            f"kl_divergence: logits shapes differ, {tuple(logits_clean.shape)} vs {tuple(logits_other.shape)}"
        )
    log_p = torch.log_softmax(logits_clean.detach().to(dtype), dim=-1)
    return kl_from_log_probs(log_p, torch.log_softmax(logits_other.detach().to(dtype), dim=-1))


def kl_divergence(logits_clean: Tensor, logits_other: Tensor) -> float:
    """Mean over positions of KL(p_clean ‖ p_other). logits: (N, V)."""
    _check_tokens("kl_divergence", logits_clean, logits_other)
    return float(kl_per_position(logits_clean, logits_other).mean())


def kl_score(kl_spliced: float, kl_zero: float) -> float:
    """(kl_zero − kl_spliced) / kl_zero: the share of the zero-ablation KL that splicing avoids."""
    if not kl_zero > FLOAT32_ROUNDING:
        raise UndefinedMetric(
            f"kl_score: the zero-ablation KL is {kl_zero:.3g} nats, at the level of float32 rounding "
            f"({FLOAT32_ROUNDING:.2g}); zeroing the hook changed nothing measurable"
        )
    return (kl_zero - kl_spliced) / kl_zero


def feature_density(feature_acts: Tensor) -> Tensor:
    """Per feature: fraction of tokens where it is > 0. (N, F) → (F,) float64. Dead ⇔ density == 0."""
    _check_tokens("feature_density", feature_acts)
    return (feature_acts > 0).sum(dim=0, dtype=torch.float64) / feature_acts.shape[0]


def log_density(density: Tensor) -> Tensor:
    """log10(density + 1e-10): a dead feature maps to −10 (Kutsyk's convention)."""
    return torch.log10(_f64(density) + DENSITY_EPSILON)


def log_feature_density(feature_acts: Tensor) -> Tensor:
    """log10(feature_density + 1e-10). (N, F) → (F,)."""
    return log_density(feature_density(feature_acts))


def pearson_per_feature(a: Tensor, b: Tensor) -> Tensor:
    """Per column Pearson correlation of a[:, i] with b[:, i]. (N, F) → (F,) float64; NaN where a column is constant."""
    _check_tokens("pearson_per_feature", a, b)
    a64, b64 = _f64(a), _f64(b)
    a_c, b_c = a64 - a64.mean(dim=0), b64 - b64.mean(dim=0)
    return _pearson_from_moments((a_c * b_c).sum(0), a_c.pow(2).sum(0), b_c.pow(2).sum(0))


def _pearson_from_moments(co_moment: Tensor, m2_a: Tensor, m2_b: Tensor) -> Tensor:
    defined = (m2_a > 0) & (m2_b > 0)
    denominator = torch.sqrt(torch.where(defined, m2_a * m2_b, torch.ones_like(m2_a)))
    r = (co_moment / denominator).clamp(-1.0, 1.0)
    return torch.where(defined, r, torch.full_like(r, torch.nan))


def _log_activation_gap(a: Tensor, b: Tensor) -> Tensor:
    if bool((a < 0).any()) or bool((b < 0).any()):
        raise ValueError("dead_activation_error: feature activations must be >= 0 (a ReLU-family SAE)")
    return (torch.log10(_f64(a) + DENSITY_EPSILON) - torch.log10(_f64(b) + DENSITY_EPSILON)).abs()


def dead_activation_error(a: Tensor, b: Tensor) -> Tensor:
    """Per feature: mean over tokens of |log10(a + 1e-10) − log10(b + 1e-10)|. (N, F) → (F,) float64."""
    _check_tokens("dead_activation_error", a, b)
    return _log_activation_gap(a, b).mean(dim=0)


def logit_similarity(W_dec: Tensor, W_U_base: Tensor, W_U_ft: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Per feature: Pearson over the vocabulary of W_dec[i] @ W_U_base and W_dec[i] @ W_U_ft. → (F,) float64.

    W_dec: (F, d), W_U_*: (d, V). The logit vectors are never formed: with U the unembedding centred over the
    vocabulary, the centred logits are w U, so their co-moment is w (U_base U_ftᵀ) wᵀ and their second moments
    w (U U ᵀ) wᵀ: three d × d Gram matrices in float64, then O(d²) per feature instead of O(d·V). Chunked over
    features (memory O(chunk_size × d)).
    """
    if W_U_base.shape != W_U_ft.shape:
        raise ValueError(
            f"logit_similarity: unembeddings differ in shape, {tuple(W_U_base.shape)} vs {tuple(W_U_ft.shape)} "
            "(the two models must share d_model and the vocabulary)"
        )
    if W_dec.shape[-1] != W_U_base.shape[0]:
        raise ValueError(f"logit_similarity: W_dec has d={W_dec.shape[-1]} but W_U has d_model={W_U_base.shape[0]}")
    u_base, u_ft = (u - u.mean(dim=1, keepdim=True) for u in (_f64(W_U_base), _f64(W_U_ft)))
    d = u_base.shape[0]
    grams = torch.cat([u_base @ u_ft.T, u_base @ u_base.T, u_ft @ u_ft.T], dim=1)  # (d, 3d)
    chunks = []
    for start in range(0, W_dec.shape[0], chunk_size):
        w = _f64(W_dec[start : start + chunk_size]).to(grams.device)
        moments = ((w @ grams).view(-1, 3, d) * w[:, None, :]).sum(-1)  # (chunk, 3): co-moment, m2 base, m2 ft
        chunks.append(_pearson_from_moments(moments[:, 0], moments[:, 1], moments[:, 2]))
    return torch.cat(chunks)


@dataclass(frozen=True)
class Summary:
    """Mean / median / count of a per-feature tensor over its defined (non-NaN) entries."""

    mean: float | None
    median: float | None
    n_defined: int
    n_undefined: int


def summarise_defined(values: Tensor, selection: Tensor | None = None) -> Summary:
    """Summarise values[selection], dropping NaN (undefined) entries and counting them; None when nothing is left."""
    chosen = values if selection is None else values[selection]
    defined = chosen[~torch.isnan(chosen)]
    n_undefined = int(chosen.numel() - defined.numel())
    if defined.numel() == 0:
        return Summary(None, None, 0, n_undefined)
    return Summary(float(defined.mean()), float(defined.median()), int(defined.numel()), n_undefined)


# ---------------------------------------------------------------------------------------------------------------
# Streaming accumulators: update() batch by batch, compute() equals the pure function on the concatenation
# ---------------------------------------------------------------------------------------------------------------


def count_active(feature_acts: Tensor) -> Tensor:
    """(n,) int32: the features > 0 of each token (exact; a bool sum into int64, torch's default, took 6× as long)."""
    return (feature_acts > 0).sum(-1, dtype=torch.int32)


@dataclass
class ReconstructionStats:
    """Streams l0, mse and pooled explained_variance over (tokens, d) batches.

    The centred sum of squares is merged batch by batch (Chan et al.'s pairwise update) rather than taken as
    Σ‖x‖² − n‖x̄‖², which cancels catastrophically on residual streams with a large mean direction.
    """

    n_tokens: int = 0
    sum_l0: float = 0.0
    sum_squared_error: float = 0.0
    mean_x: Tensor | None = None
    centred_sum_of_squares: float = 0.0
    scalar_mean: float = 0.0
    scalar_sum_of_squares: float = 0.0
    raw_sum_of_squares: float = 0.0
    """Σ‖x‖², the scale the rounding rule compares the variance with."""

    def update(self, x: Tensor, x_hat: Tensor, feature_acts: Tensor | None = None, *, active: Tensor | None = None):
        """x, x_hat (n, d); the features either as activations (n, d_sae) or already counted: `active` (n,), the
        features > 0 of each token (a caller splitting one batch's tokens counts them once)."""
        n = x.shape[0]
        if n == 0:
            return
        x64 = _f64(x)
        active = count_active(feature_acts) if active is None else active
        self.sum_l0 += float(active.sum(dtype=torch.float64))
        self.sum_squared_error += float((x64 - _f64(x_hat)).pow(2).sum())
        self.raw_sum_of_squares += float(x64.pow(2).sum())
        batch_mean = x64.mean(dim=0)
        batch_m2 = float((x64 - batch_mean).pow(2).sum())
        scalar_mean = float(x64.mean())
        scalar_m2 = float((x64 - scalar_mean).pow(2).sum())
        if self.mean_x is None:
            self.mean_x, self.centred_sum_of_squares = batch_mean, batch_m2
            self.scalar_mean, self.scalar_sum_of_squares = scalar_mean, scalar_m2
        else:
            total = self.n_tokens + n
            delta = batch_mean - self.mean_x
            self.centred_sum_of_squares += batch_m2 + float(delta.pow(2).sum()) * self.n_tokens * n / total
            self.mean_x = self.mean_x + delta * (n / total)
            scalar_delta = scalar_mean - self.scalar_mean  # the same merge over scalars: d elements per token
            self.scalar_sum_of_squares += scalar_m2 + scalar_delta**2 * x.shape[1] * self.n_tokens * n / total
            self.scalar_mean += scalar_delta * n / total
        self.n_tokens += n

    def _require_tokens(self, name: str) -> None:
        if self.n_tokens == 0:
            raise UndefinedMetric(f"{name}: no tokens to evaluate")

    def l0(self) -> float:
        self._require_tokens("l0")
        return self.sum_l0 / self.n_tokens

    def mse(self) -> float:
        self._require_tokens("mse")
        return self.sum_squared_error / self.n_tokens

    def explained_variance(self) -> float:
        self._require_tokens("explained_variance")
        return explained_variance_from_sums(
            self.sum_squared_error, self.centred_sum_of_squares, self.raw_sum_of_squares, "explained_variance"
        )

    def explained_variance_flattened(self) -> float:
        self._require_tokens("explained_variance_flattened")
        return explained_variance_from_sums(
            self.sum_squared_error,
            self.scalar_sum_of_squares,
            self.raw_sum_of_squares,
            "explained_variance_flattened",
        )


@dataclass
class PooledPerTokenEVStats:
    """`explained_variance_per_token` with every token of every batch as one batch (Kissane's alpaca reduction:
    x̄ over all tokens), so the value does not depend on the batch size. x̄ is known only at the end, so the
    inputs are kept (O(tokens × d_model), float32): for the few thousand masked chat tokens it is meant for."""

    max_values: int = 1 << 27
    """Largest tokens × d_model kept (512 MB of float32); beyond it `update` raises."""
    inputs: list[Tensor] = field(default_factory=list)
    errors: list[Tensor] = field(default_factory=list)
    n_values: int = 0

    def update(self, x: Tensor, x_hat: Tensor) -> None:
        """x, x_hat: (tokens, d_model)."""
        _check_tokens("explained_variance_per_token_pooled", x, x_hat)
        self.n_values += x.numel()
        if self.n_values > self.max_values:
            raise ValueError(
                f"explained_variance_per_token_pooled keeps every token; {self.n_values} values exceed "
                f"{self.max_values}: drop the reconstruction-pooled group or evaluate fewer tokens"
            )
        self.inputs.append(x.detach().float().cpu())
        self.errors.append((_f64(x) - _f64(x_hat)).pow(2).sum(dim=-1).cpu())

    def compute(self) -> float:
        if not self.inputs:
            raise UndefinedMetric("explained_variance_per_token_pooled: no tokens were evaluated")
        x64 = _f64(torch.cat(self.inputs))
        distance_to_mean = (x64 - x64.mean(dim=0)).pow(2).sum(dim=-1)
        at_mean = _tokens_at_mean(x64, distance_to_mean)
        if at_mean:
            raise UndefinedMetric(
                f"explained_variance_per_token_pooled: {at_mean} of {len(x64)} tokens sit at the mean, within "
                "float32 rounding"
            )
        return float((1.0 - torch.cat(self.errors) / distance_to_mean).mean())


@dataclass
class BatchMean:
    """Mean over batches of a per-batch value (the Kissane reductions); empty batches are not counted."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    def compute(self, name: str) -> float:
        if not self.values:
            raise UndefinedMetric(f"{name}: no batch had tokens to evaluate")
        return math.fsum(self.values) / len(self.values)


@dataclass
class TokenMean:
    """Token-weighted mean of a per-token quantity (CE, KL), plus its per-batch means for batch-mean reductions. A
    batch left out (`leave_out`: its scores overflowed) keeps its place in the batch means as None."""

    total: float = 0.0
    count: int = 0
    batch_means: list[float | None] = field(default_factory=list)
    undefined_because: str | None = None
    """Why the mean is undefined although it has tokens (a batch's scores overflowed); None: it is not."""

    def update(self, per_token: Tensor) -> None:
        if per_token.numel() == 0:
            return
        batch_total = float(_f64(per_token).sum())
        self.total += batch_total
        self.count += per_token.numel()
        self.batch_means.append(batch_total / per_token.numel())

    def leave_out(self) -> None:
        """This batch's values are not in the mean (`BatchOverflows` says why)."""
        self.batch_means.append(None)

    def compute(self, name: str) -> float:
        if self.undefined_because is not None:
            raise UndefinedMetric(f"{name}: {self.undefined_because}")
        if self.count == 0:
            raise UndefinedMetric(f"{name}: no positions to evaluate")
        return self.total / self.count


@dataclass
class BatchOverflows:
    """Which batches' scores of each continuation (clean, spliced, zero) held inf or NaN: a half-precision forward
    that overflowed. Under `undefined` (the default rule) every mean such a batch feeds becomes undefined, naming how
    many batches overflowed; under `drop-inf-batches` (Kutsyk et al.'s `loss[~torch.isinf(loss)]`, on the spliced
    loss only) a spliced batch whose NLL holds +inf and no NaN is left out of the spliced CE and KL means and counted
    in `dropped`. `sae_bench.precision.OVERFLOW_RULES`."""

    rule: str = "undefined"
    overflowed: dict[str, int] = field(default_factory=dict)
    dropped: int = 0

    def admit(self, name: str, nll: Tensor, kl: Tensor | None, means: Sequence[TokenMean]) -> bool:
        """True when this batch's scores of continuation `name` are finite and enter `means`; otherwise each of
        `means` leaves the batch out, and is made undefined unless the rule drops it."""
        finite = bool(torch.isfinite(nll).all()) and (kl is None or bool(torch.isfinite(kl).all()))
        if finite:
            return True
        for mean in means:
            mean.leave_out()
        if self.rule == "drop-inf-batches" and name == "spliced" and not bool(torch.isnan(nll).any()):
            self.dropped += 1
            return False
        self.overflowed[name] = self.overflowed.get(name, 0) + 1
        why = (
            f"{self.overflowed[name]} batch(es) of the {name} run overflowed (inf or NaN scores: a half-precision "
            "forward); run the case in float32 or bfloat16"
        )
        if self.rule == "drop-inf-batches":
            why += " (the case's drop-inf-batches rule drops only a spliced batch whose loss is inf, never a NaN)"
        for mean in means:
            mean.undefined_because = why
        return False

    @property
    def batches_overflowed(self) -> int:
        return sum(self.overflowed.values())


def ce_loss_recovered_batch_mean(clean: TokenMean, spliced: TokenMean, zero: TokenMean) -> float:
    """Mean over batches of the per-batch CE loss recovered (Kissane's Pile table); every batch must be defined."""
    if not clean.batch_means:
        raise UndefinedMetric("ce_loss_recovered_batch_mean: no positions to evaluate")
    left_out = sum(None in b for b in zip(clean.batch_means, spliced.batch_means, zero.batch_means, strict=True))
    if left_out:
        raise UndefinedMetric(f"ce_loss_recovered_batch_mean: {left_out} batch(es) left out (their scores overflowed)")
    per_batch = zip(clean.batch_means, spliced.batch_means, zero.batch_means, strict=True)
    ratios = [ce_loss_recovered(c, s, z) for c, s, z in per_batch]
    return math.fsum(ratios) / len(ratios)


@dataclass
class FeatureDensityStats:
    """Streams per-feature firing counts; density() equals feature_density on the concatenation."""

    d_sae: int
    n_tokens: int = 0
    fire_counts: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.fire_counts = torch.zeros(self.d_sae, dtype=torch.float64)

    def update(self, feature_acts: Tensor) -> None:
        self.fire_counts += (feature_acts > 0).sum(dim=0, dtype=torch.int32).cpu()  # exact; int64 sums ran 6× slower
        self.n_tokens += feature_acts.shape[0]

    def update_sparse(self, codes: SparseCodes) -> None:
        """The same from the batch's non-zero entries (`SparseCodes`), in O(non-zeros)."""
        firing = codes.features[codes.values > 0]
        self.fire_counts += torch.bincount(firing, minlength=self.d_sae).to(torch.float64).cpu()
        self.n_tokens += codes.n

    def density(self) -> Tensor:
        if self.n_tokens == 0:
            raise UndefinedMetric("feature_density: no tokens to evaluate")
        return self.fire_counts / self.n_tokens


@dataclass
class PearsonStats:
    """Streams per-feature Pearson correlation of paired (N, F) batches in O(F) memory (Chan's pairwise merge)."""

    d_sae: int
    n_tokens: int = 0
    mean_a: Tensor = field(init=False)
    mean_b: Tensor = field(init=False)
    m2_a: Tensor = field(init=False)
    m2_b: Tensor = field(init=False)
    co_moment: Tensor = field(init=False)

    def __post_init__(self) -> None:
        zeros = lambda: torch.zeros(self.d_sae, dtype=torch.float64)  # noqa: E731
        self.mean_a, self.mean_b, self.m2_a, self.m2_b, self.co_moment = (zeros() for _ in range(5))

    def update(self, a: Tensor, b: Tensor) -> None:
        """a, b: (N, F) paired activations."""
        self.update_pair(PairedCodes.of(a, b))

    def update_pair(self, pair: PairedCodes) -> None:
        """Only the non-zero entries are read (SAE codes are sparse): the batch's centred moments are the sums over
        those entries plus the zeros' share, (N − nnz) · mean² per feature."""
        n = pair.a.n
        if n == 0:
            return
        batch_mean_a, m2_a = _sparse_centred_moments(pair.a)
        batch_mean_b, m2_b = _sparse_centred_moments(pair.b)
        features = pair.features
        device = features.device
        centred = (_f64(pair.a_values) - batch_mean_a.to(device)[features]) * (
            _f64(pair.b_values) - batch_mean_b.to(device)[features]
        )
        both_zero = n - torch.bincount(features, minlength=self.d_sae).to(torch.float64)
        co = torch.zeros(self.d_sae, dtype=torch.float64, device=device).index_add_(0, features, centred)
        co = co.cpu() + both_zero.cpu() * batch_mean_a * batch_mean_b
        total = self.n_tokens + n
        weight = self.n_tokens * n / total
        delta_a, delta_b = batch_mean_a - self.mean_a, batch_mean_b - self.mean_b
        self.m2_a += m2_a + delta_a.pow(2) * weight
        self.m2_b += m2_b + delta_b.pow(2) * weight
        self.co_moment += co + delta_a * delta_b * weight
        self.mean_a += delta_a * (n / total)
        self.mean_b += delta_b * (n / total)
        self.n_tokens = total

    def compute(self) -> Tensor:
        if self.n_tokens == 0:
            raise UndefinedMetric("pearson_per_feature: no tokens to evaluate")
        return _pearson_from_moments(self.co_moment, self.m2_a, self.m2_b)


class SparseCodes(NamedTuple):
    """The non-zero entries of (N, F) codes, in row-major order: row, feature and value of each."""

    n: int
    d: int
    tokens: Tensor
    features: Tensor
    values: Tensor

    @classmethod
    def of(cls, x: Tensor) -> SparseCodes:
        tokens, features = x.nonzero(as_tuple=True)
        return cls(x.shape[0], x.shape[1], tokens, features, x[tokens, features])

    def keys(self) -> Tensor:
        """token · F + feature of each entry: ascending, as nonzero lists them."""
        return self.tokens * self.d + self.features


class PairedCodes(NamedTuple):
    """Paired (N, F) codes a and b read once each: their non-zero entries, and the entries where either is
    non-zero with both values there (0 where one of them is zero)."""

    a: SparseCodes
    b: SparseCodes
    features: Tensor
    a_values: Tensor
    b_values: Tensor

    @classmethod
    def of(cls, a: Tensor, b: Tensor) -> PairedCodes:
        if a.shape != b.shape:
            raise ValueError(f"paired codes differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        sparse_a, sparse_b = SparseCodes.of(a), SparseCodes.of(b)
        union = torch.unique(torch.cat([sparse_a.keys(), sparse_b.keys()]))  # sorted
        return cls(sparse_a, sparse_b, union % a.shape[1], _values_at(sparse_a, union), _values_at(sparse_b, union))


def _values_at(codes: SparseCodes, keys: Tensor) -> Tensor:
    """codes' value at each (sorted) key, 0 where it has no entry."""
    own = codes.keys()
    if own.numel() == 0:
        return torch.zeros(keys.shape, dtype=codes.values.dtype, device=keys.device)
    index = torch.searchsorted(own, keys).clamp(max=own.numel() - 1)
    found = own[index] == keys
    return torch.where(found, codes.values[index], torch.zeros((), dtype=codes.values.dtype, device=keys.device))


def _sparse_centred_moments(codes: SparseCodes) -> tuple[Tensor, Tensor]:
    """Per feature, from the non-zero entries only: (mean, Σ (x − mean)²) over the N rows; float64 on the CPU."""
    n, d, features = codes.n, codes.d, codes.features
    values = _f64(codes.values)
    mean = torch.zeros(d, dtype=torch.float64, device=values.device).index_add_(0, features, values) / n
    squares = torch.zeros(d, dtype=torch.float64, device=values.device).index_add_(
        0, features, (values - mean[features]) ** 2
    )
    zeros = n - torch.bincount(features, minlength=d).to(torch.float64)
    return mean.cpu(), (squares + zeros * mean**2).cpu()


@dataclass
class DeadActivationErrorStats:
    """Streams dead_activation_error for every feature in O(F) memory."""

    d_sae: int
    n_tokens: int = 0
    total_gap: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.total_gap = torch.zeros(self.d_sae, dtype=torch.float64)

    def update(self, a: Tensor, b: Tensor) -> None:
        """a, b: (N, F) paired activations."""
        self.update_pair(PairedCodes.of(a, b))

    def update_pair(self, pair: PairedCodes) -> None:
        """Only entries where a or b fires are read: where both are 0 the gap is exactly 0 (and a negative
        activation is non-zero, so the gap's own check still sees it)."""
        gap = _log_activation_gap(pair.a_values, pair.b_values)
        device = pair.features.device
        self.total_gap += (
            torch.zeros(self.d_sae, dtype=torch.float64, device=device).index_add_(0, pair.features, gap).cpu()
        )
        self.n_tokens += pair.a.n

    def compute(self) -> Tensor:
        if self.n_tokens == 0:
            raise UndefinedMetric("dead_activation_error: no tokens to evaluate")
        return self.total_gap / self.n_tokens
