"""Every reported metric's definition, in one table: a version and a one-line formula per metric.

A number is comparable with another only under the same definition (docs/design.md §4). When a formula changes, its
version goes up and the old one is kept in `earlier`; an expectation or a recorded value of another version is then
"stale", neither passed nor failed (`sae_bench.expectations.rules`), and `sae-bench compare` refuses to compare it.
Each definition also holds its `pin`: the value it gives on the fixed synthetic input that
`tests/engine/test_definitions.py` builds, so a formula that changes without a new version fails that test.
The arithmetic itself lives in `metrics.py` (and `universality.py`, `outliers.py`, `drift.py` for their groups).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Definition:
    """One metric's current definition; `earlier` maps each former version to what it said."""

    name: str
    version: int
    formula: str
    pin: float | None
    """Its value on the pinned synthetic input (None: undefined there, which the pin test checks as well)."""
    earlier: Mapping[int, str] = field(default_factory=dict)


def _catalogue(*definitions: Definition) -> dict[str, Definition]:
    return {d.name: d for d in definitions}


DEFINITIONS: dict[str, Definition] = _catalogue(
    # -- one SAE spliced into one model (TransferReport) -----------------------------------------------------------
    Definition("n_tokens_reconstructed", 1, "positions encoded, spliced and counted in l0 / mse / EV / density", 78),
    Definition("n_predictions", 1, "next-token predictions counted in the CE and KL means", 90),
    Definition("l0", 1, "mean over reconstructed tokens of #{features > 0}", 16.935897435897434),
    Definition("mse", 1, "mean over reconstructed tokens of ‖x − x̂‖² in the SAE's input space", 0.14971627830280348),
    Definition("explained_variance", 1, "1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the mean over all tokens", 0.9876975774495906),
    Definition(
        "explained_variance_flattened",
        1,
        "1 − Σ(x − x̂)² / Σ(x − m)² over every scalar, m one mean of all elements (Kutsyk's R²)",
        0.9897436062022326,
    ),
    Definition(
        "explained_variance_per_token",
        1,
        "mean over batches of mean over tokens of 1 − ‖x − x̂‖² / ‖x − x̄_batch‖² (Kissane / SAELens legacy)",
        0.981033407546994,
    ),
    Definition(
        "explained_variance_per_token_pooled",
        1,
        "mean over tokens of 1 − ‖x − x̂‖² / ‖x − x̄‖², x̄ over all tokens (Kissane's alpaca EV); undefined unless "
        "EvalConfig.pooled_per_token_ev",
        0.9870880026512889,
    ),
    Definition("ce_clean", 1, "token-weighted mean NLL of the clean model", 0.8769242922465007),
    Definition("ce_spliced", 1, "token-weighted mean NLL with the SAE reconstruction spliced in", 0.8780107074313693),
    Definition(
        "ce_zero_ablation", 1, "token-weighted mean NLL with the hook zeroed under the position mask", 4.110873699188232
    ),
    Definition("ce_delta", 1, "ce_spliced − ce_clean", 0.0010864151848686276),
    Definition(
        "ce_loss_recovered", 1, "(ce_zero − ce_spliced) / (ce_zero − ce_clean) of the pooled means", 0.9996640593131926
    ),
    Definition(
        "ce_loss_recovered_batch_mean", 1, "mean over batches of per-batch CE loss recovered", 0.9994632972014049
    ),
    Definition("kl_spliced", 1, "mean over counted predictions of KL(p_clean ‖ p_spliced)", 0.05418533749050564),
    Definition("kl_zero", 1, "mean over counted predictions of KL(p_clean ‖ p_zero_ablated)", 3.3432893647087947),
    Definition("kl_score", 1, "(kl_zero − kl_spliced) / kl_zero", 0.9837928065507948),
    Definition("dead_fraction", 1, "fraction of features that never fire on the reconstructed tokens", 0.1875),
    Definition(
        "batches_overflowed", 1, "batches whose clean, spliced or zero-ablated scores held inf or NaN (each run)", 0
    ),
    Definition("batches_dropped", 1, "spliced batches left out by the case's drop-inf-batches rule", 0),
    # -- outliers (OutlierBreakdown.to_row; each outlier counted once, in this order) -------------------------------
    Definition("outlier_fraction", 1, "outliers / positions considered (norm above the case's threshold)", 0.1875),
    Definition("outlier_share_bos", 1, "share of the outliers that are BOS tokens (counted first)", 0.0),
    Definition("outlier_share_early_position", 1, "share at position < 10 and not BOS", 0.5555555555555556),
    Definition("outlier_share_newline", 1, "share that are newline tokens, past position 10", 0.0),
    Definition("outlier_share_other", 1, "share of every other outlier", 0.4444444444444444),
    # -- one SAE on a base and a fine-tuned model (UniversalityReport.summary, ResidualSimilarity) ------------------
    Definition("dead_fraction_base", 1, "fraction of features with density 0 in the base model", 0.125),
    Definition("dead_fraction_finetuned", 1, "fraction of features with density 0 in the fine-tuned model", 0.109375),
    Definition(
        "log_density_correlation",
        1,
        "Pearson across features of log10(density + 1e-10) in the two models",
        0.6994822096176033,
    ),
    Definition(
        "activation_similarity_regular_mean",
        1,
        "mean over regular features (log density in [-5, -1] in both) of the Pearson over tokens of f_i(base) vs "
        "f_i(fine-tuned); undefined features counted, not averaged",
        0.9461648471772864,
    ),
    Definition(
        "logit_similarity_regular_mean",
        1,
        "mean over regular features of the Pearson over the vocabulary of W_dec[i]·W_U(base) vs "
        "W_dec[i]·W_U(fine-tuned)",
        0.9987613020055248,
    ),
    Definition(
        "dead_activation_error_dead_in_base_only_mean",
        1,
        "mean over features dead only in the base model of mean_t |log10(f_b + 1e-10) − log10(f_f + 1e-10)|",
        0.12205694878848866,
    ),
    Definition(
        "dead_activation_error_dead_in_finetuned_only_mean",
        1,
        "the same over features dead only in the fine-tuned model",
        0.44644719413907885,
    ),
    Definition("residual_cosine", 1, "mean over positions of cos(x_base, x_finetuned) at the hook", 0.9900152267478756),
    Definition("residual_distance", 1, "mean over positions of ‖x_base − x_finetuned‖ at the hook", 0.5311607836525468),
    # -- per token class (token_classes.py; recorded as NAME[CLASS]; pinned on the class `content`) ---------------
    Definition("tokens_by_class", 1, "reconstructed positions of the class (outliers: 0, they are not spliced)", 74),
    Definition("predictions_by_class", 1, "counted predictions made at positions of the class", 70),
    Definition("l0_by_class", 1, "mean over the class's reconstructed tokens of #{features > 0}", 16.83783783783784),
    Definition(
        "mse_by_class",
        1,
        "mean over the class's reconstructed tokens of ‖x − x̂‖² in the SAE's input space",
        0.1482368001325908,
    ),
    Definition(
        "explained_variance_by_class",
        1,
        "1 − Σ‖x − x̂‖² / Σ‖x − x̄_class‖² over the class's tokens, x̄_class the class's own mean",
        0.9877057926154327,
    ),
    Definition(
        "ce_delta_by_class",
        1,
        "mean over the class's counted predictions of NLL_spliced − NLL_clean",
        0.008865955897739955,
    ),
    Definition(
        "kl_spliced_by_class",
        1,
        "mean over the class's counted predictions of KL(p_clean ‖ p_spliced)",
        0.06227959224155971,
    ),
    # -- per feature (feature_stats.py; recorded as vectors; pinned on their mean over the features shown) -----------
    Definition(
        "latent_scaling_beta",
        1,
        "per feature Σ_t f(t)·⟨x_t, d⟩ / (‖d‖²·Σ_t f(t)²) over reconstructed tokens, x the SAE's input, d the decoder "
        "row (Minder et al. 2025); pinned: its mean over the features that fire",
        23.726035149725757,
    ),
    Definition(
        "latent_scaling_ratio",
        1,
        "per feature ν = β(other model) / β(own model); pinned: its mean over the features firing on 10+ tokens of "
        "each model",
        1.001614295247,
    ),
    # -- derived report fields ---------------------------------------------------------------------------------------
    Definition(
        "weight_drift",
        2,
        "√(Σ‖W_f − W_b‖²) / √(Σ‖W_b‖²) over every parameter of the HF checkpoints (raw weights, whatever the backend)",
        0.016597092151243668,
        earlier={
            1: "the same ratio over the weights the backend holds: TransformerLens's processed weights on `hooked` "
            "(folded norms, centred unembedding), HF's raw weights on the bridge",
        },
    ),
)
"""Metric name → its current definition, in report order."""


EXPLANATIONS = tuple(name for name in DEFINITIONS if name.endswith("_by_class") or name.startswith("latent_scaling"))
"""The metrics that say why a transfer fails (`sae-bench explain`, the suite's --explain): recorded, never judged."""


class UnknownDefinition(KeyError):
    """A metric name that no definition covers."""


PAIRED_DIFFERENCE = "_paired_difference"
"""The paired release gate's field for metric M, `M_paired_difference`: the mean over units of M(new) − M(old) on the
same rows. It is defined by M's definition, so it carries M's version."""


BY_CLASS = "_by_class"
"""The per-token-class form of a metric, `M_by_class`, recorded once per class as `M_by_class[CLASS]`."""
TOKEN_CLASSES = ("outlier", "first", "special", "newline", "user", "assistant", "content")
"""The classes a position can belong to, in the order they are tried (`engine.token_classes` says what each is)."""
CLASS_METRIC = re.compile(r"(?P<metric>\w+_by_class)\[(?P<token_class>[a-z-]+)\]")
"""A recorded class value's name: M_by_class[CLASS]."""


def class_metric(metric: str, token_class: str) -> str:
    """The recorded name of `metric` (e.g. ce_delta) over one token class: `ce_delta_by_class[first]`."""
    return f"{metric}{BY_CLASS}[{token_class}]"


def definition(name: str) -> Definition:
    """The current definition of `name` (a paired difference's: its metric's version, a formula saying so; a
    class's value `M_by_class[CLASS]`: M_by_class's)."""
    if (match := CLASS_METRIC.fullmatch(name)) and match["metric"] in DEFINITIONS:
        if match["token_class"] in TOKEN_CLASSES:
            return DEFINITIONS[match["metric"]]
        raise UnknownDefinition(f"no token class {match['token_class']!r} in {name!r}; the classes: {TOKEN_CLASSES}")
    if name.endswith(PAIRED_DIFFERENCE) and name.removesuffix(PAIRED_DIFFERENCE) in DEFINITIONS:
        metric = DEFINITIONS[name.removesuffix(PAIRED_DIFFERENCE)]
        formula = f"mean over units of {metric.name}(new) − {metric.name}(old) on the same rows (paired release gate)"
        return Definition(name, metric.version, formula, None, metric.earlier)
    try:
        return DEFINITIONS[name]
    except KeyError:
        raise UnknownDefinition(f"no metric {name!r} is defined (`sae-bench metrics` lists them)") from None


def current_version(name: str) -> int:
    return definition(name).version


def formulas(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """name → formula, for `sae-bench metrics` and the docs of each report's fields."""
    return {name: definition(name).formula for name in names}
