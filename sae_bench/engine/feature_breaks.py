"""The features of one SAE that break between the model it was trained on and another: from each model's feature
densities over the same kind of rows, per feature, born (dead on its own model, firing on the other), died (the
reverse) or shifted (firing on both, density changed by at least `SHIFT` times), and the features that moved most
by |log10 density ratio| (log10(density + 1e-10), Kutsyk's convention, so a dead feature sits at −10)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

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
