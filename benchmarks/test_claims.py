"""Every claim of every family, one test item each: `pytest benchmarks -k mistral` runs a family's claims too."""


def test_claim(claim_id: str, suite, run_item, record_property) -> None:
    run_item(lambda: suite.check_claim(claim_id, record_property), record_property)
