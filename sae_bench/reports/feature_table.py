"""The features of one SAE that break from the model it was trained on (`own`) to another (`other`): the largest
moves by density and by latent scaling, each with its numbers and where it fires most on both models. Read by
`sae-bench explain --own` and by the report's feature pages."""

from __future__ import annotations

import pandas as pd

from sae_bench.engine.feature_breaks import FeatureBreaks
from sae_bench.engine.feature_stats import FeatureShift, FeatureSide

RANKINGS = {"density": "|log10 density ratio|", "scaling": "|log10 |ν||"}
"""How the listed features are picked: by their density move (`FeatureBreaks.top`) or their latent-scaling move
(`FeatureShift.top`)."""


def feature_table(own: FeatureSide, other: FeatureSide, by: str, top: int, contexts: int = 1) -> pd.DataFrame:
    """The `top` features that moved most, ranked `by` "density" or "scaling" (`RANKINGS`): per feature its density
    on each model and their log10 ratio, β on each and ν, and up to `contexts` top-activating windows on each model
    (joined by newlines)."""
    if by not in RANKINGS:
        raise ValueError(f"feature_table: rank by one of {sorted(RANKINGS)}, got {by!r}")
    breaks = FeatureBreaks(own.density, other.density)
    shift = FeatureShift(own.summary, other.summary)
    picked = [row["feature"] for row in (breaks.top(top) if by == "density" else shift.top(top))]
    log_ratio, nu = breaks.log_ratio, shift.ratio
    rows = [
        {
            "feature": j,
            "density_own": float(own.density[j]),
            "density_other": float(other.density[j]),
            "log10_density_ratio": float(log_ratio[j]),
            "beta_own": float(own.summary.beta[j]),
            "beta_other": float(other.summary.beta[j]),
            "nu": float(nu[j]),
            "fires_most_on_own": "\n".join(own.contexts(j, contexts)) or "(never fires)",
            "fires_most_on_other": "\n".join(other.contexts(j, contexts)) or "(never fires)",
        }
        for j in picked
    ]
    return pd.DataFrame(rows, columns=FEATURE_COLUMNS)


FEATURE_COLUMNS = (
    "feature", "density_own", "density_other", "log10_density_ratio", "beta_own", "beta_other", "nu",
    "fires_most_on_own", "fires_most_on_other",
)  # fmt: skip
