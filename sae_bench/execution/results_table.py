"""What the executor has measured, keyed by a typed key: per case and SAE spec (and number of row subsets) its metric
values, the details of its whole-row evaluation, or the error its SAE met. Results from a Ray unit land here too."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from sae_bench.cases.registry import Case
from sae_bench.errors import UnitFailed, UnusableSAE

Values = dict[str, float | None]
Details = tuple[dict[str, str], dict[str, Tensor]]
"""Why each undefined metric is undefined, and the per-feature vectors."""


class MeasurementKey(NamedTuple):
    """One measurement: a case with one SAE, on all its rows (`subsets` 0) or on `subsets` disjoint slices."""

    case_id: str
    sae: str
    subsets: int = 0

    @classmethod
    def of(cls, case: Case, subsets: int = 0) -> MeasurementKey:
        return cls(case.id, case.sae, subsets)


class ResultsTable:
    """Values, details and failures by `MeasurementKey`; a failure is kept for the whole-row key only."""

    def __init__(self) -> None:
        self.values: dict[MeasurementKey, Values | list[Values]] = {}
        self.details: dict[MeasurementKey, Details] = {}
        self.failures: dict[MeasurementKey, UnusableSAE] = {}

    def settled(self, case: Case) -> bool:
        """Measured, or failed: nothing left to run for the case's whole rows."""
        key = MeasurementKey.of(case)
        return key in self.values or key in self.failures

    def raise_failure(self, case: Case) -> None:
        """Raise the error the case's SAE met, if it met one."""
        failure = self.failures.get(MeasurementKey.of(case))
        if failure is not None:
            raise failure

    def fail(self, case: Case, err: UnusableSAE) -> UnusableSAE:
        """Keep the error of the case's SAE, named by its spec; returns it, to raise."""
        self.failures[MeasurementKey.of(case)] = err.named(case.sae)
        return self.failures[MeasurementKey.of(case)]

    def record(self, case: Case, values: Values, details: Details) -> None:
        """The case's whole-row values and details."""
        self.values[MeasurementKey.of(case)] = values
        self.details[MeasurementKey.of(case)] = details

    def absorb(self, result) -> None:
        """What a Ray unit measured (`ray_units.UnitResult`), as if measured here."""
        for (case_id, sae), values in result.values.items():
            self.values[MeasurementKey(case_id, sae)] = values
        for (case_id, sae), details in result.details.items():
            self.details[MeasurementKey(case_id, sae)] = details
        for (case_id, sae), why in result.failures.items():
            self.failures[MeasurementKey(case_id, sae)] = UnitFailed(why)
