"""Every registered case, one test item per (case, metric group): `pytest benchmarks -k mistral`."""

from pathlib import Path

import pytest

from sae_bench.cases import load_registry

REGISTRY = load_registry(Path(__file__).parent / "cases")


def _items():
    for case in REGISTRY:
        # one xdist group per family: its models load once per worker and all groups of a case share one evaluation
        marks = [getattr(pytest.mark, case.tier), pytest.mark.xdist_group(case.family)]
        marks += [pytest.mark.gpu] if case.gpu else []
        marks += [pytest.mark.slow] if case.slow else []
        for group in case.groups:
            yield pytest.param(case.id, group, id=f"{case.id}:{group}", marks=marks)


@pytest.mark.parametrize(("case_id", "group"), list(_items()))
def test_case(case_id: str, group: str, suite) -> None:
    suite.check(case_id, group)
