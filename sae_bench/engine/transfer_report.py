"""TransferReport: what one evaluation measured, as plain numbers (None with a reason where undefined).

`TransferAccumulators` streams one evaluation's statistics and `finalize_transfer_report` turns them into the
report; the metric arithmetic itself lives in metrics.py, each metric's version and formula in definitions.py
(`sae-bench metrics` prints them).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from sae_bench.engine import metrics
from sae_bench.engine.backends import Model, dtype_name
from sae_bench.engine.definitions import formulas
from sae_bench.engine.eval_config import EvalConfig
from sae_bench.engine.feature_stats import FeatureStats, FeatureSummary
from sae_bench.engine.outliers import OutlierBreakdown, OutlierBreakdownStats
from sae_bench.engine.splicing import HookSite, SaePass, logits_of_final_rows
from sae_bench.engine.token_classes import TokenClassStats


def _metric() -> Any:
    """A metric field; its definition (version and formula) is `sae_bench.engine.definitions.DEFINITIONS[name]`."""
    return field(metadata={"metric": True})


@dataclass(frozen=True)
class TransferReport:
    """One SAE spliced into one model over one token set."""

    hook: str
    n_sequences: int
    n_tokens_reconstructed: int = _metric()
    n_predictions: int = _metric()
    l0: float | None = _metric()
    mse: float | None = _metric()
    explained_variance: float | None = _metric()
    explained_variance_flattened: float | None = _metric()
    explained_variance_per_token: float | None = _metric()
    explained_variance_per_token_pooled: float | None = _metric()
    ce_clean: float | None = _metric()
    ce_spliced: float | None = _metric()
    ce_zero_ablation: float | None = _metric()
    ce_delta: float | None = _metric()
    ce_loss_recovered: float | None = _metric()
    ce_loss_recovered_batch_mean: float | None = _metric()
    kl_spliced: float | None = _metric()
    kl_zero: float | None = _metric()
    kl_score: float | None = _metric()
    dead_fraction: float | None = _metric()
    batches_overflowed: int = _metric()
    batches_dropped: int = _metric()
    outliers: OutlierBreakdown = field(default=OutlierBreakdown(0, 0, 0, 0, 0, 0))
    feature_density: Tensor | None = field(default=None, repr=False)
    """Per feature: fraction of reconstructed tokens where it fires, (d_sae,) float64."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Every setting that shaped the numbers (scaling factor and its source, outlier policy, masks, batch size)."""
    undefined: dict[str, str] = field(default_factory=dict)
    """metric → why it has no value."""
    token_classes: dict[str, dict[str, float | None]] | None = None
    """class → metric → value (`sae_bench.engine.token_classes`), when the config asked for them."""
    features: FeatureSummary | None = field(default=None, repr=False)
    """Per feature latent scaling and top activations (`sae_bench.engine.feature_stats`), when the config asked."""

    @classmethod
    def metric_docs(cls) -> dict[str, str]:
        """Metric name → its formula (`definitions.DEFINITIONS`), in report order."""
        return formulas([f.name for f in fields(cls) if f.metadata.get("metric")])

    def to_row(self) -> dict[str, Any]:
        """A flat dict of scalars (metrics, outlier breakdown, settings) for pandas, expectations and JSON."""
        row: dict[str, Any] = {"hook": self.hook, "n_sequences": self.n_sequences}
        row.update({name: getattr(self, name) for name in self.metric_docs()})
        row.update(self.outliers.to_row())
        row.update({f"setting_{k}": v for k, v in self.settings.items()})
        return row

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.to_row()])


@dataclass
class TransferAccumulators:
    """Everything one evaluation streams; `finalize_transfer_report` turns it into the report."""

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
    overflows: metrics.BatchOverflows = field(default_factory=metrics.BatchOverflows)
    token_classes: TokenClassStats | None = None
    features: FeatureStats | None = None

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

    def add_scores(self, scores: PredictionScores, spliced: Hashable) -> None:
        """A batch's scores, with the spliced residual `spliced` as this evaluation's (float64 sums)."""
        if scores.n == 0:
            return
        for name, key in (("clean", "clean"), ("zero", "zero"), ("spliced", spliced)):
            means = [self.ce[name]] + ([self.kl[name]] if name in self.kl else [])
            if self.overflows.admit(name, scores.nll[key], scores.kl.get(key), means):
                self.ce[name].update(scores.nll[key])
                if name in self.kl:
                    self.kl[name].update(scores.kl[key])


@dataclass(frozen=True)
class PredictionScores:
    """Per counted prediction of one batch: NLL of the clean, zero-ablated and each spliced continuation, and
    KL(p_clean ‖ ·) of the others; keyed "clean", "zero" and by each spliced residual's key."""

    n: int
    nll: dict[Hashable, Tensor]
    kl: dict[Hashable, Tensor]


@dataclass(frozen=True)
class DistinctRows:
    """A (batch, pos, d) residual kept as its distinct rows (u, pos, d) and which of them each row is (batch,)."""

    rows: Tensor
    row_of: Tensor

    def expand(self) -> Tensor:
        return self.rows[self.row_of]


def _float_logits(model: Model, rows: Tensor) -> Tensor:
    logits = logits_of_final_rows(model, rows)
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class _CountedLogits:
    """One continuation's counted predictions as logits, a chunk at a time. A DistinctRows continuation whose
    distinct (row, position) pairs fit one chunk is unembedded (and normalised) once, and each chunk gathers its
    rows' copies."""

    def __init__(self, model: Model, final: Tensor | DistinctRows, counted: Tensor, chunk: int) -> None:
        self.model, self.distinct = model, None
        if isinstance(final, DistinctRows):
            batch_index, position = counted.nonzero(as_tuple=True)  # the order of final[:, :-1][counted]
            pair = final.row_of[batch_index] * counted.shape[1] + position
            needed, self.index = torch.unique(pair, return_inverse=True)
            if needed.numel() <= chunk:
                logits = _float_logits(model, final.rows[:, :-1].flatten(0, 1)[needed])
                self.distinct = (logits, metrics.softmax_and_log_normaliser(logits)[1])
                return
            final = final.expand()
        self.rows = final[:, :-1][counted]  # (n_counted, d_model)

    def chunk(self, start: int, size: int) -> tuple[Tensor, Tensor | None]:
        """(logits, their log-normaliser when already known) of counted predictions start … start + size."""
        if self.distinct is None:
            return _float_logits(self.model, self.rows[start : start + size]), None
        index = self.index[start : start + size]
        return self.distinct[0][index], self.distinct[1][index]


@torch.inference_mode()
def score_predictions(
    model: Model,
    finals: dict[Hashable, Tensor | DistinctRows],
    tokens: Tensor,
    counted: Tensor,
    chunk: int,
) -> PredictionScores:
    """finals: "clean", "zero" and each spliced key → (batch, pos, d_model) residual after the last block (or its
    DistinctRows); counted: (batch, pos − 1), which predictions to score. Only counted rows are unembedded, `chunk`
    rows at a time, in float32 at least. Per chunk: one fused softmax per continuation (its log-normaliser gives the
    NLL), and for each non-clean continuation one dot of p_clean with the logit difference gives its KL
    (metrics.py); at most three (chunk × vocab) tensors live at once. The clean and zero scores serve every spliced
    residual."""
    targets = tokens[:, 1:][counted]  # (n_counted,)
    sources = {key: _CountedLogits(model, f, counted, chunk) for key, f in finals.items()}
    nll: dict[Hashable, list[Tensor]] = {key: [] for key in sources}
    kl: dict[Hashable, list[Tensor]] = {key: [] for key in sources if key != "clean"}
    for start in range(0, targets.shape[0], chunk):
        chunk_targets = targets[start : start + chunk]
        clean = sources["clean"].chunk(start, chunk)[0]
        p_clean, lse_clean = metrics.softmax_and_log_normaliser(clean)
        nll["clean"].append(metrics.next_token_nll_from_logits(clean, lse_clean, chunk_targets))
        for key in kl:
            other, lse_other = sources[key].chunk(start, chunk)
            if lse_other is None:
                lse_other = metrics.softmax_and_log_normaliser(other)[1]
            nll[key].append(metrics.next_token_nll_from_logits(other, lse_other, chunk_targets))
            kl[key].append(metrics.kl_from_logits(p_clean, lse_clean, clean, other, lse_other, overwrite_q=True))
    if targets.shape[0] == 0:
        return PredictionScores(0, {}, {})
    return PredictionScores(
        int(targets.shape[0]),
        {key: torch.cat(values) for key, values in nll.items()},
        {key: torch.cat(values) for key, values in kl.items()},
    )


def defined_or_none(name: str, compute: Callable[[], float], undefined: dict[str, str]) -> float | None:
    """compute(), or None with the reason recorded in `undefined` when the metric is undefined."""
    try:
        return compute()
    except metrics.UndefinedMetric as err:
        undefined[name] = str(err)
        return None


def finalize_transfer_report(
    acc: TransferAccumulators, *, site: HookSite, config: EvalConfig, n_sequences: int, d_sae: int
) -> TransferReport:
    """Turn the streamed statistics of one evaluation into its report."""
    undefined: dict[str, str] = {}

    def value(name: str, compute: Callable[[], float]) -> float | None:
        return defined_or_none(name, compute, undefined)

    def derived(name: str, compute: Callable[..., float], **inputs: float | None) -> float | None:
        missing = [k for k, v in inputs.items() if v is None]
        if missing:
            undefined[name] = f"needs {', '.join(missing)}, which is undefined"
            return None
        return value(name, lambda: compute(**inputs))

    rec = acc.reconstruction
    ce_clean = value("ce_clean", lambda: acc.ce["clean"].compute("ce_clean"))
    ce_spliced = value("ce_spliced", lambda: acc.ce["spliced"].compute("ce_spliced"))
    ce_zero = value("ce_zero_ablation", lambda: acc.ce["zero"].compute("ce_zero_ablation"))
    kl_spliced = value("kl_spliced", lambda: acc.kl["spliced"].compute("kl_spliced"))
    kl_zero = value("kl_zero", lambda: acc.kl["zero"].compute("kl_zero"))
    if acc.ev_per_token_undefined:
        undefined["explained_variance_per_token"] = acc.ev_per_token_undefined[0]
        ev_per_token = None
    else:
        ev_per_token = value(
            "explained_variance_per_token", lambda: acc.ev_per_token.compute("explained_variance_per_token")
        )
    # not computed unless asked for: None, and no reason (it is not undefined, only not measured)
    pooled_ev = None if acc.ev_pooled is None else value("explained_variance_per_token_pooled", acc.ev_pooled.compute)
    density = value("feature_density", acc.density.density)
    return TransferReport(
        hook=site.name,
        n_sequences=n_sequences,
        n_tokens_reconstructed=rec.n_tokens,
        n_predictions=acc.ce["clean"].count,
        l0=value("l0", rec.l0),
        mse=value("mse", rec.mse),
        explained_variance=value("explained_variance", rec.explained_variance),
        explained_variance_flattened=value("explained_variance_flattened", rec.explained_variance_flattened),
        explained_variance_per_token=ev_per_token,
        explained_variance_per_token_pooled=pooled_ev,
        ce_clean=ce_clean,
        ce_spliced=ce_spliced,
        ce_zero_ablation=ce_zero,
        ce_delta=derived("ce_delta", lambda clean, spliced: spliced - clean, clean=ce_clean, spliced=ce_spliced),
        ce_loss_recovered=derived(
            "ce_loss_recovered", metrics.ce_loss_recovered, ce_clean=ce_clean, ce_spliced=ce_spliced, ce_zero=ce_zero
        ),
        ce_loss_recovered_batch_mean=value(
            "ce_loss_recovered_batch_mean",
            lambda: metrics.ce_loss_recovered_batch_mean(acc.ce["clean"], acc.ce["spliced"], acc.ce["zero"]),
        ),
        kl_spliced=kl_spliced,
        kl_zero=kl_zero,
        kl_score=derived("kl_score", metrics.kl_score, kl_spliced=kl_spliced, kl_zero=kl_zero),
        dead_fraction=None if density is None else float((density == 0).double().mean()),
        batches_overflowed=acc.overflows.batches_overflowed,
        batches_dropped=acc.overflows.dropped,
        outliers=acc.outliers.compute(),
        feature_density=density,
        settings=_settings(config, d_sae),
        undefined=undefined,
        token_classes=None if acc.token_classes is None else acc.token_classes.compute(),
        features=None if acc.features is None else acc.features.compute(acc.density.fire_counts),
    )


def _settings(config: EvalConfig, d_sae: int) -> dict[str, Any]:
    policy = config.outliers
    return {
        "d_sae": d_sae,
        "batch_size": config.batch_size,
        "scaling_factor": config.scaling_factor,
        "scaling_factor_source": config.scaling_factor_source,
        "outlier_threshold": None if policy is None else policy.threshold,
        "outlier_norm": None if policy is None else policy.norm,
        "outliers_count_in_ce": None if policy is None else policy.count_in_ce,
        "exclude_special_tokens": config.exclude_special_tokens,
        "dtype": None if config.dtype is None else dtype_name(config.dtype),
        "overflow": config.overflow,
    }
