"""One pass over token batches: an SAE spliced into one model → a TransferReport.

Per batch the model runs to the hook once; the SAE encodes the evaluated positions; then the clean, spliced and
zero-ablated residuals continue from the hook, stacked into one call (DESIGN §5). Forward passes per batch:
1 + 2·(L − l)/L full-model equivalents. Every statistic streams (metrics.py), so memory does not grow with tokens.

Position sets, per batch (all (batch, pos) booleans):
- `considered` = position mask ∧ ¬special token (when excluded);
- `reconstructed` = considered ∧ ¬outlier: encoded, spliced, and counted in l0 / mse / EV / density;
- zero ablation zeroes every position under the position mask (as Kissane and SAELens do);
- CE and KL count the prediction made at position t (of token t+1) iff t is considered (and, when the outlier
  policy says so, not an outlier).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_bench import metrics
from sae_bench.data import TokenBatches, special_token_ids
from sae_bench.outliers import MeanNormStats, OutlierBreakdownStats, OutlierPolicy, newline_token_ids, outlier_mask
from sae_bench.results import TransferReport, finalize_transfer_report
from sae_bench.splicing import (
    HookSite,
    SaePass,
    check_sae_fits,
    encode_decode,
    final_residual_from_hook,
    logits_of_final_rows,
    resolve_hook,
    run_to_hook,
    spliced_residual,
    zero_ablated_residual,
)


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
    """Predictions scored at once; None: as many as fit 2^26 logits (256 MB in float32) per variant."""
    device: str | None = None
    """Where to run; None keeps the model's device. The model and SAE are moved there."""
    dtype: torch.dtype | None = None
    """dtype of the model and SAE; None keeps theirs. Statistics always accumulate in float64."""
    progress: bool = True
    """Show a progress bar over batches."""
    pooled_per_token_ev: bool = False
    """Also report `explained_variance_per_token_pooled` (keeps every reconstructed token: chat-sized sets)."""

    def __post_init__(self) -> None:
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


def prepare(model: HookedTransformer, sae: SAE, config: EvalConfig) -> HookSite:
    """Check the hook and widths, and move model and SAE to the configured device and dtype."""
    site = resolve_hook(model, config.hook)
    check_sae_fits(model, sae, site)
    for target in (config.device, config.dtype):
        if target is not None:
            model.to(target, print_details=False)  # HookedTransformer.to takes one device or dtype at a time
            sae.to(target)
    return site


def check_finite(x: Tensor, where: str, batch_offset: int) -> None:
    """Raise naming the (sequence, position) pairs whose activations are NaN or infinite."""
    bad = ~torch.isfinite(x).all(dim=-1)
    if bool(bad.any()):
        pairs = [(int(s) + batch_offset, int(p)) for s, p in bad.nonzero()[:5].tolist()]
        raise ValueError(
            f"{where}: {int(bad.sum())} positions have NaN/Inf activations, first (sequence, position): {pairs}. "
            "Check the model's dtype (fp16 overflows) and its weights."
        )


@dataclass
class _Accumulators:
    """Everything one evaluation streams."""

    d_sae: int
    outliers: OutlierBreakdownStats
    reconstruction: metrics.ReconstructionStats = field(default_factory=metrics.ReconstructionStats)
    ev_per_token: metrics.BatchMean = field(default_factory=metrics.BatchMean)
    ev_per_token_undefined: list[str] = field(default_factory=list)
    ce: dict[str, metrics.TokenMean] = field(
        default_factory=lambda: {k: metrics.TokenMean() for k in ("clean", "spliced", "zero")}
    )
    kl: dict[str, metrics.TokenMean] = field(
        default_factory=lambda: {k: metrics.TokenMean() for k in ("spliced", "zero")}
    )
    density: metrics.FeatureDensityStats = field(init=False)
    ev_pooled: metrics.PooledPerTokenEVStats | None = None

    def __post_init__(self) -> None:
        self.density = metrics.FeatureDensityStats(self.d_sae)

    def add_reconstruction(self, sae_pass: SaePass) -> None:
        self.reconstruction.update(sae_pass.sae_in, sae_pass.x_hat, sae_pass.feature_acts)
        self.density.update(sae_pass.feature_acts)
        if sae_pass.sae_in.shape[0] == 0:
            return
        if self.ev_pooled is not None:
            self.ev_pooled.update(sae_pass.sae_in, sae_pass.x_hat)
        try:
            self.ev_per_token.add(metrics.explained_variance_per_token(sae_pass.sae_in, sae_pass.x_hat))
        except metrics.UndefinedMetric as err:
            self.ev_per_token_undefined.append(str(err))

    def add_predictions(
        self, model: HookedTransformer, finals: dict[str, Tensor], tokens: Tensor, counted: Tensor, chunk: int
    ) -> None:
        """finals: variant → (batch, pos, d_model) residual after the last block; counted: (batch, pos − 1), which
        predictions to score. Only counted rows are unembedded, `chunk` rows at a time, one log-softmax per variant
        and chunk in float32 at least; the per-token values of the whole batch then go to the float64 sums."""
        targets = tokens[:, 1:][counted]  # (n_counted,)
        rows = {variant: f[:, :-1][counted] for variant, f in finals.items()}  # variant → (n_counted, d_model)
        nll: dict[str, list[Tensor]] = {variant: [] for variant in rows}
        kl: dict[str, list[Tensor]] = {"spliced": [], "zero": []}
        for start in range(0, targets.shape[0], chunk):
            log_probs = {}
            for variant, r in rows.items():
                logits = logits_of_final_rows(model, r[start : start + chunk])
                log_probs[variant] = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
                nll[variant].append(metrics.next_token_nll(log_probs[variant], targets[start : start + chunk]))
            p_clean = log_probs["clean"].exp()
            for variant in kl:
                kl[variant].append(metrics.kl_from_log_probs(log_probs["clean"], log_probs[variant], p_clean))
        for variant, values in nll.items():
            if values:
                self.ce[variant].update(torch.cat(values))
        for variant, values in kl.items():
            if values:
                self.kl[variant].update(torch.cat(values))


def _final_residuals(
    model: HookedTransformer, site: HookSite, residuals: dict[str, Tensor], stack: bool
) -> dict[str, Tensor]:
    """The residual after the last block for each residual at the hook; one stacked call or one call each."""
    if not stack:
        return {k: final_residual_from_hook(model, r, site) for k, r in residuals.items()}
    finals = final_residual_from_hook(model, torch.cat(list(residuals.values())), site)
    return dict(zip(residuals, finals.chunk(len(residuals)), strict=True))


LOGITS_PER_CHUNK = 1 << 26


@torch.inference_mode()
def evaluate_transfer(
    model: HookedTransformer,
    sae: SAE,
    tokens: Tensor,
    config: EvalConfig,
    *,
    position_mask: Tensor | None = None,
) -> TransferReport:
    """Splice `sae` into `model` at `config.hook` over `tokens` (n_sequences, pos) and measure everything.

    position_mask: (n_sequences, pos) bool, which positions are evaluated (None: all).
    """
    site = prepare(model, sae, config)
    batches = TokenBatches(tokens, position_mask, config.batch_size)
    special = special_token_ids(model, config.special_token_ids) if config.exclude_special_tokens else None
    acc = _Accumulators(sae.cfg.d_sae, _outlier_breakdown_stats(model))
    acc.ev_pooled = metrics.PooledPerTokenEVStats() if config.pooled_per_token_ev else None
    device = config.device or model.cfg.device
    scale = config.scaling_factor
    chunk = config.logit_rows_per_chunk or max(1, LOGITS_PER_CHUNK // model.cfg.d_vocab)
    for batch in tqdm(batches, desc=f"evaluate {site.name}", disable=not config.progress, leave=False):
        toks, pos_mask = batch.tokens.to(device), batch.position_mask.to(device)
        considered = pos_mask if special is None else pos_mask & ~torch.isin(toks, special.to(device))
        x = run_to_hook(model, toks, site)  # (batch, pos, d_model)
        check_finite(x, f"activations at {site.name}", batch.offset)
        outlier = torch.zeros_like(considered)
        if config.outliers is not None:
            outlier = outlier_mask(x, config.outliers, scale) & considered
        acc.outliers.update(outlier, toks, considered)
        reconstructed = considered & ~outlier
        sae_pass = encode_decode(sae, x[reconstructed], scale)  # (n_reconstructed, ·)
        acc.add_reconstruction(sae_pass)
        residuals = {
            "clean": x,
            "spliced": spliced_residual(x, reconstructed, sae_pass.x_hat, scale),
            "zero": zero_ablated_residual(x, pos_mask),
        }
        counted = considered[:, :-1]
        if config.outliers is not None and not config.outliers.count_in_ce:
            counted = counted & ~outlier[:, :-1]
        finals = _final_residuals(model, site, residuals, config.stack_continuations)
        acc.add_predictions(model, finals, toks, counted, chunk)
    if acc.reconstruction.n_tokens == 0:
        raise ValueError(_nothing_left_message(batches, acc))
    return finalize_transfer_report(acc, site=site, config=config, n_sequences=tokens.shape[0], d_sae=sae.cfg.d_sae)


def _nothing_left_message(batches: TokenBatches, acc: _Accumulators) -> str:
    n_masked = int(batches.position_mask.sum())
    considered, outliers = acc.outliers.n_positions, acc.outliers.n_outliers
    return (
        f"no positions left to evaluate: the position mask selects {n_masked} of {batches.tokens.numel()}, "
        f"special-token exclusion leaves {considered}, the outlier filter removes {outliers}. Widen the mask, "
        "raise the outlier threshold or stop excluding special tokens."
    )


def _outlier_breakdown_stats(model: HookedTransformer) -> OutlierBreakdownStats:
    tokenizer = model.tokenizer
    if tokenizer is None:
        return OutlierBreakdownStats()
    return OutlierBreakdownStats(bos_token_id=tokenizer.bos_token_id, newline_token_ids=newline_token_ids(tokenizer))


@torch.inference_mode()
def estimate_scaling_factor(
    model: HookedTransformer, tokens: Tensor, hook: str, *, batch_size: int = 8, position_mask: Tensor | None = None
) -> float:
    """√d_model / mean ‖x‖ at `hook` over the given tokens (all positions under the mask, BOS included)."""
    site = resolve_hook(model, hook)
    norms = MeanNormStats()
    for batch in TokenBatches(tokens, position_mask, batch_size):
        toks = batch.tokens.to(model.cfg.device)
        x = run_to_hook(model, toks, site)
        norms.update(x[batch.position_mask.to(x.device)])
    return norms.scaling_factor(model.cfg.d_model)
