"""Every claim of every family, one test item each: `pytest benchmarks -k mistral` runs a family's claims too."""

from pathlib import Path

import pytest

from sae_bench.cases import load_registry

REGISTRY = load_registry(Path(__file__).parent / "cases")


def _items():
    for claim in REGISTRY.claims.values():
        cases = [REGISTRY.get(case_id) for case_id in claim.case_ids]
        tier = "zoo" if all(case.tier == "zoo" for case in cases) else "hub"
        marks = [getattr(pytest.mark, tier), pytest.mark.xdist_group(claim.family)]
        marks += [pytest.mark.gpu] if any(case.gpu for case in cases) else []
        marks += [pytest.mark.slow] if any(case.slow for case in cases) else []
        yield pytest.param(claim.id, id=claim.id, marks=marks)


@pytest.mark.parametrize("claim_id", list(_items()))
def test_claim(claim_id: str, suite) -> None:
    suite.check_claim(claim_id)
