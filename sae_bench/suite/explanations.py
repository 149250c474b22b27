"""The suite's --explain: what it records, per transfer case, about why the case fails. Its metrics per token class
(measurement rows of group `token-classes`, `M_by_class[CLASS]`, never judged), its features' latent scaling
(a vector), and the table of its SAE's features that broke from the case of the same SAE on the model it was
trained on (`sae_bench.engine.feature_breaks.feature_table`, an `Explanation` of kind "features")."""

from __future__ import annotations

from collections.abc import Iterable

from sae_bench.cases.registry import Case
from sae_bench.engine.definitions import BY_CLASS, EXPLANATIONS, current_version
from sae_bench.engine.feature_breaks import RANKINGS, FeatureBreaks, feature_table
from sae_bench.engine.feature_stats import FeatureShift, FeatureSide
from sae_bench.results_store.database import FEATURES, Explanation

GROUP = "token-classes"
"""The measurement group the per-class values are recorded under."""
TOP_FEATURES, CONTEXTS = 20, 3
"""Features per ranking in a recorded table, and top-activating windows per feature and model."""
SAME_ROWS = ("sae", "hook", "dataset", "tokens", "context", "mask", "variant", "drop_first_token", "dtype")
"""What a case of the same SAE on its own model must share with the transfer case for their features to compare."""


def class_values(measured: dict) -> dict:
    """The measured values of every token class (`M_by_class[CLASS]`), in the order measured."""
    return {name: value for name, value in measured.items() if f"{BY_CLASS}[" in name}


def trained_on(model_name: str, case: Case) -> bool:
    """Whether `case`'s model is the one an SAE's metadata names (its `model_name`): the model's spec itself (the
    zoo's SAEs name it), or the spec's last path part (SAELens names hub models by theirs: gemma-2-2b for
    hf:google/gemma-2-2b), case-insensitive."""
    name, spec = model_name.lower(), case.model.lower()
    return bool(name) and (spec == name or spec.rsplit("/", 1)[-1] == name.rsplit("/", 1)[-1])


def own_case(case: Case, candidates: Iterable[Case], model_name: str) -> Case | None:
    """The transfer case of the same SAE, rows and settings on the model it was trained on (`trained_on`), among
    `candidates`; None when `case` is that case, or none of them is."""
    if trained_on(model_name, case):
        return None
    for other in candidates:
        if not other.paired and other.id != case.id and trained_on(model_name, other):
            if _same_rows(other) == _same_rows(case):
                return other
    return None


def paired_with_another_model(cases: Iterable[Case]) -> set[str]:
    """The transfer cases that share their SAE, rows and settings (`SAME_ROWS`) with a case on another model: only
    these can be a feature table's case or its own case, so only these stream their features."""
    transfers = [case for case in cases if not case.paired]
    models: dict[tuple, set[str]] = {}
    for case in transfers:
        models.setdefault(_same_rows(case), set()).add(case.model)
    return {case.id for case in transfers if len(models[_same_rows(case)]) > 1}


def _same_rows(case: Case) -> tuple:
    """What `SAME_ROWS` names of a case: equal for two cases whose features compare."""
    return tuple(getattr(case, field) for field in SAME_ROWS)


def feature_explanation(
    case: Case, own: Case, own_side: FeatureSide | None, side: FeatureSide | None
) -> Explanation | None:
    """The table of `case`'s SAE's features that broke from `own` (counts, and the top features by each ranking
    with their windows on both models); None when either evaluation streamed no features."""
    if own_side is None or side is None:
        return None
    supported, median = FeatureShift(own_side.summary, side.summary).median()
    body = {
        "counts": FeatureBreaks(own_side.density, side.density).counts(),
        "scaling": {"supported": supported, "median_nu": median},
        "tables": {
            by: feature_table(own_side, side, by, TOP_FEATURES, CONTEXTS).to_dict(orient="records") for by in RANKINGS
        },
    }
    versions = {name: current_version(name) for name in EXPLANATIONS if name.startswith("latent_scaling")}
    return Explanation(case.id, FEATURES, own.id, case.dtype, versions, body)
