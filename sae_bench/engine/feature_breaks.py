"""The features of one SAE that break between the model it was trained on and another: from each model's feature
densities over the same kind of rows, per feature, born (dead on its own model, firing on the other), died (the
reverse) or shifted (firing on both, density changed by at least `SHIFT` times), and the features that moved most
by |log10 density ratio| (log10(density + 1e-10), Kutsyk's convention, so a dead feature sits at −10); and
`feature_table`, those features and the ones whose latent scaling moved most, with where each fires most on both
models (read by `sae-bench explain --own`, the suite's --explain and the report's feature pages)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from torch import Tensor

from sae_bench.engine.feature_stats import FeatureShift, FeatureSide
from sae_bench.engine.metrics import log_density

SHIFT = 10.0
"""A density change of at least this factor, in either direction, counts as shifted (up to 1e-9 in log10: an exact
tenfold change computed in floating point may land a rounding step short)."""


@dataclass(frozen=True)
class FeatureBreaks:
    """Per-feature density change of one SAE from its own model (`own`) to another (`other`)."""

    own: Tensor
    other: Tensor

    def __post_init__(self) -> None:
        if self.own.shape != self.other.shape or self.own.ndim != 1:
            raise ValueError(
                f"feature densities of one SAE on two models, (d_sae,) each; got {tuple(self.own.shape)} and "
                f"{tuple(self.other.shape)}"
            )

    @property
    def log_ratio(self) -> Tensor:
        """log10 of the density on the other model over the density on the own one (each + 1e-10), float64."""
        return log_density(self.other.double()) - log_density(self.own.double())

    def counts(self) -> dict[str, int]:
        alive_own, alive_other = self.own > 0, self.other > 0
        both = alive_own & alive_other
        return {
            "features": int(self.own.numel()),
            "born": int((~alive_own & alive_other).sum()),
            "died": int((alive_own & ~alive_other).sum()),
            "shifted": int((both & (self.log_ratio.abs() >= math.log10(SHIFT) - 1e-9)).sum()),
            "dead_on_both": int((~alive_own & ~alive_other).sum()),
        }

    def top(self, k: int = 10) -> list[dict[str, float | int]]:
        """The k features that moved most by |log10 density ratio|, largest first (ties by index)."""
        ratio = self.log_ratio
        order = ratio.abs().sort(descending=True, stable=True).indices[:k].tolist()  # stable: equal moves by index
        return [
            {"feature": i, "density_own": float(self.own[i]), "density_other": float(self.other[i]),
             "log10_ratio": float(ratio[i])}
            for i in order
        ]  # fmt: skip


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
