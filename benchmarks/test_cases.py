"""Every registered case, one test item per (case, metric group): `pytest benchmarks -k mistral`.

The items come from the suite's registry (`pytest_generate_tests` in benchmarks/conftest.py), so a case-file
mistake is one usage error at configuration, not an import error here."""


def test_case(case_id: str, group: str, suite, run_item, record_property) -> None:
    run_item(lambda: suite.check(case_id, group, record_property), record_property)
