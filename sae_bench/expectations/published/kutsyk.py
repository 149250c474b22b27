"""Kutsyk et al.'s published results, from the paper's own tables and text (docs/seed-conventions.md §4.4 notes what the
notebooks printed, which differs in places). Each file says which positions its figures cover: the CE and R²
figures exclude outliers (section 4.2: raw norms above 290 for Gemma-2b, 200 for Mistral-7B, left un-spliced but
scored), L0 and dead features count every token, the feature universality pass counts every position of the rows
the notebook ran (Gemma's with their leading BOS cut before the models ran; Mistral's, built with no separator,
whole), the residual similarity keeps every position.
"""

from __future__ import annotations

import math
import statistics

from sae_bench.expectations.published.common import expectation, with_collapse, with_delta
from sae_bench.expectations.rules import ExpectationFile, MetricExpectation

KUTSYK_DTYPE = "float16"
"""Kutsyk et al. ran every model in float16 (`DTYPE = torch.float16` in saetuning/get_scores.py, the notebooks'
`dtype=torch.float16`)."""

KUTSYK = (
    "Kutsyk et al., Do Sparse Autoencoders (SAEs) transfer across base and finetuned language models? "
    "(ICLR blogpost track 2025); tommasomncttn/SAE-Transferability"
)
SAMPLE = 256_000
"""Tokens per experiment (section 4.2)."""

_BUGGY_SPLICE = (
    "published {value} (section 4.3 table) came from the flattened-splice code (docs/seed-conventions.md §2.9: all "
    "non-outlier tokens of a batch run as one sequence), so a masked splice cannot reproduce it"
)
_L0_ELSEWHERE = "the paper's L0 and dead features count every token: checked in the case's /all-tokens variant"


def _file(case: str, table: str, positions: str, metrics: dict, unchecked: dict | None = None) -> ExpectationFile:
    provenance = {"kind": "published", "source": KUTSYK, "dtype": KUTSYK_DTYPE, "table": table, "positions": positions}
    return with_collapse(ExpectationFile(case, provenance, metrics, unchecked or {}))


def _outlier_fraction(percent: float, printed_digits: int) -> MetricExpectation:
    """An outlier share printed as a percentage: 3 binomial standard errors over the sample plus the rounding."""
    fraction = round(percent / 100, 12)
    rounding = 0.5 * 10 ** (-printed_digits) / 100
    spread = 3 * math.sqrt(fraction * (1 - fraction) / SAMPLE) + rounding
    basis = f"3 binomial standard errors over {SAMPLE} tokens plus the printed rounding ({rounding:.1g})"
    return MetricExpectation(fraction, "both", spread, 0.0, basis)


def _scores(model: str, case: str, row: tuple, outliers: tuple[float, int] | None) -> list[ExpectationFile]:
    """One row of a section 4.3 table: the filtered case (CE, R², outlier share) and its all-tokens variant."""
    l0, clean, spliced, delta, r2, dead_percent = row
    table = f"section 4.3 table, {model} row"
    metrics = {
        "ce_clean": expectation("ce_clean", clean),
        "explained_variance_flattened": expectation("explained_variance_flattened", r2),
    }
    unchecked = {"l0": _L0_ELSEWHERE}
    if case.startswith("gemma"):  # the Gemma substitution losses came from the flattened splice
        unchecked |= {"ce_spliced": _BUGGY_SPLICE.format(value=spliced), "ce_delta": _BUGGY_SPLICE.format(value=delta)}
    else:
        metrics["ce_spliced"] = expectation("ce_spliced", spliced)
        metrics = with_delta(metrics, given=delta)
    if outliers is not None:
        metrics["outlier_fraction"] = _outlier_fraction(*outliers)
    positions = "CE and R²: every position, outliers (raw norm, section 4.2) un-spliced but scored; R² without them"
    filtered = _file(
        case, table + " (section 4.2 outlier share)" * (outliers is not None), positions, metrics, unchecked
    )
    everything = {"l0": expectation("l0", l0), "dead_fraction": expectation("dead_fraction", dead_percent / 100)}
    return [filtered, _file(f"{case}/all-tokens", table, "every position (no outlier filter)", everything)]


UNIVERSALITY_ROWS = {
    "mistral-7b": "every position of rows built as the SAE's prepend_bos = false store built them (documents "
    "concatenated, no separator; the notebook's exclude_bos acts only on a BOS-prepending store, so it kept "
    "position 0)",
    "gemma-2b": "similarities and dead activation errors: every position of rows whose leading BOS was cut before "
    "both models ran (5_features_transfer's exclude_bos: tokens[:, 1:]); the bands they are averaged over: the "
    "densities of every position of the full rows, BOS included (4_sae_eval's, which 5_features_transfer loads)",
}
"""Which rows and positions the universality figures cover, per family (docs/seed-conventions.md §3)."""
RESIDUAL_ROWS = {
    "mistral-7b": "",
    "gemma-2b": "; the notebook's token set (pre_3_compute_activations' DATASET_NAME): the stored rows of "
    "ctigges/openwebtext-gemma-1024-cl, 1024 gemma-2b tokens each (BOS first, documents joined by EOS), 250 of them, "
    "which the case reads as they are stored",
}
"""Which token set the residual similarity was computed on, where the case file names it."""


def _universality(case: str, section: str, figures: dict, unchecked: dict) -> ExpectationFile:
    metrics = {
        name: (value if isinstance(value, MetricExpectation) else expectation(name, value))
        for name, value in figures.items()
    }
    dead = "the paper's dead fractions count every token: checked in the /all-tokens cases"
    unchecked = {"dead_fraction_base": dead, "dead_fraction_finetuned": dead} | unchecked
    positions = (
        f"{UNIVERSALITY_ROWS[case.split('/')[0]]}; the paper samples at most 1000 regular and 100 dead features, "
        "this suite takes every feature of a band; the paper ran the models in fp16, this suite in the case's dtype"
    )
    return _file(case, section, positions, metrics, unchecked)


def _dead_error(values: list[float], section: str) -> MetricExpectation:
    """A mean of exclusively-dead activation errors; tolerance 3 standard errors of that mean (with one feature's
    sd taken as the mean itself where the paper gives only the mean of 100)."""
    mean = statistics.fmean(values) if len(values) > 1 else values[0]
    sd = statistics.stdev(values) if len(values) > 1 else mean
    n = len(values) if len(values) > 1 else 100
    spread = 3 * sd / math.sqrt(n)
    return MetricExpectation(mean, "lower", spread, 0.0, f"3 standard errors of a mean over {n} features ({section})")


def kutsyk() -> list[ExpectationFile]:
    """Every Kutsyk et al. expectation file."""
    files = _scores("Mistral-7B", "mistral-7b/res-wg-l8@base", (83.37, 1.78, 1.93, 0.15, 0.68, 0.76), (0.7, 1))
    files += _scores("Mistral-7B MetaMath", "mistral-7b/res-wg-l8@math", (90.22, 1.94, 2.1, 0.16, 0.58, 0.64), None)
    files += _scores("Gemma-2b Base", "gemma-2b/res-jb-l6@base", (53.59, 2.65, 3.16, 0.51, 0.97, 48.1), (0.24, 2))
    files += _scores(
        "Gemma-2b Python-codes", "gemma-2b/res-jb-l6@python-codes", (84.74, 3.29, 7.5, 4.21, -10.27, 0.1), None
    )
    files.append(
        _universality(
            "mistral-7b/res-wg-l8@base-vs-math",
            "section 5.3 (similarities, dead-feature error); section 4.3 text (log-density correlation 0.94)",
            {
                "activation_similarity_regular_mean": 0.958,
                "logit_similarity_regular_mean": 0.9996,
                "log_density_correlation": 0.94,
                "dead_activation_error_dead_in_base_only_mean": _dead_error([0.0003], "section 5.3"),
            },
            {"dead_activation_error_dead_in_finetuned_only_mean": "section 5.3 says only 'even smaller' than 0.0003"},
        )
    )
    files.append(
        _universality(
            "gemma-2b/res-jb-l6@base-vs-python-codes/without-bos",
            "section 5.2 (similarities, dead-feature errors); section 4.3 text (log-density correlation 0.47)",
            {
                "activation_similarity_regular_mean": 0.39,
                "logit_similarity_regular_mean": 0.952,
                "log_density_correlation": 0.47,
                "dead_activation_error_dead_in_base_only_mean": _dead_error([0.025], "section 5.2"),
                "dead_activation_error_dead_in_finetuned_only_mean": _dead_error(
                    [0.34, 3.19], "section 5.2: two features"
                ),
            },
            {},
        )
    )
    for case, cosine in (
        ("mistral-7b/res-wg-l8@base-vs-math/residual", 0.9648),
        ("gemma-2b/res-jb-l6@base-vs-python-codes/residual", 0.6691),
    ):
        files.append(
            _file(
                case,
                "section 3 table (global mean cosine similarity)",
                "every position, BOS included, raw activations" + RESIDUAL_ROWS[case.split("/")[0]],
                {"residual_cosine": expectation("residual_cosine", cosine)},
            )
        )
    return files
