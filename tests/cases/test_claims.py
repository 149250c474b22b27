"""Claims: parsing with errors that name the file and the claim, evaluation against plain arithmetic, the verdict
rules, a claim over a case that cannot run skips with its reason, and a broken SAE fails the claims it enters."""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sae_bench.cases.claims import Term, judge, parse_claim
from sae_bench.cases.registry import SHIPPED_CASES, CaseFileError, load_registry

REGISTRY = load_registry(SHIPPED_CASES)
ROOT = Path(__file__).resolve().parents[2]


def claim(text: str, **extra):
    entry = {"name": "a-claim", "assert": text, "source": "a paper", "margin": "a basis"} | extra
    return parse_claim(entry, "tiny-mistral", REGISTRY, "cases/tiny-mistral.toml", 0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ce_loss_recovered(base-sae@instruc) >= 0.5", "did you mean base-sae@instruct"),
        ("ce_los_recovered(base-sae@instruct) >= 0.5", "did you mean ce_loss_recovered"),
        ("activation_similarity_regular_mean(base-sae@instruct) >= 0.5", "does not measure"),
        ("ce_loss_recovered(base-sae@instruct) + 0.5", "is not one comparison"),
        ("0.1 < ce_loss_recovered(base-sae@instruct) < 0.9", "is not one comparison"),
        ("ce_loss_recovered(base-sae@instruct) >= abs(0.5)", "no case '0.5'"),
        ("ce_loss_recovered(base-sae@instruct) >= 2 ** 3", "unexpected 2 ** 3"),
        ("ce_loss_recovered(base-sae@instruct) >= x", "unexpected 'x'"),
        ("1 >= 0", "names no METRIC(CASE) term"),
        ("ce_loss_recovered(base-sae@instruct) >=", "cannot parse"),
        ("mse_by_class[firts](base-sae@instruct) >= 1", "no token class 'firts'"),
        ("mse_by_clas[first](base-sae@instruct) >= 1", "does not measure"),
        ("mse_by_class[first](base-sae@base-vs-instruct) >= 1", "does not measure"),
    ],
)
def test_a_malformed_claim_names_the_file_the_claim_and_the_problem(text, problem):
    with pytest.raises(CaseFileError) as error:
        claim(text)
    message = str(error.value)
    assert message.startswith("cases/tiny-mistral.toml: claim 'a-claim'") and problem in message, message


def test_a_claim_reading_a_token_class_has_its_cases_measure_the_classes():
    parsed = claim("mse_by_class[first](base-sae@instruct) >= 10 * mse_by_class[first](instruct-sae@instruct)")
    assert parsed.terms[0] == Term("mse_by_class[first]", "tiny-mistral/base-sae@instruct")
    assert parsed.classed_case_ids == ("tiny-mistral/base-sae@instruct", "tiny-mistral/instruct-sae@instruct")
    assert claim("l0(base-sae@base) >= 0").classed_case_ids == ()
    classed = {case.id for case in REGISTRY if case.token_classes}
    read = {cid for c in REGISTRY.claims.values() for cid in c.classed_case_ids}
    assert classed == read  # exactly the cases a shipped claim reads a class of


def test_claim_entries_need_their_source_margin_and_a_reason_when_not_reproduced():
    entry = {"name": "a-claim", "assert": "l0(base-sae@base) >= 0", "source": "a paper"}
    with pytest.raises(CaseFileError, match=r"claim\[3\]\.margin: missing"):
        parse_claim(entry, "tiny-mistral", REGISTRY, "f.toml", 3)
    with pytest.raises(CaseFileError, match="false needs why"):
        claim("l0(base-sae@base) >= 0", reproduced=False)


def test_a_case_file_with_two_claims_of_one_name_is_refused(tmp_path):
    text = (SHIPPED_CASES / "tiny-qwen2.toml").read_text()
    first = text[text.index("[[claim]]") : text.index("[[claim]]", text.index("[[claim]]") + 1)]
    (tmp_path / "tiny-qwen2.toml").write_text(text + "\n" + first)
    with pytest.raises(CaseFileError, match="duplicate claim names"):
        load_registry(tmp_path)


@given(
    a=st.floats(-10, 10),
    b=st.floats(-10, 10),
    scale=st.floats(0.1, 3),
    margin=st.floats(-1, 1),
    op=st.sampled_from([">=", "<=", ">", "<"]),
)
def test_a_claim_evaluates_as_plain_arithmetic(a, b, scale, margin, op):
    parsed = claim(f"l0(base-sae@base) {op} {scale!r} * l0(instruct-sae@base) - {margin!r}")
    values = {Term("l0", "tiny-mistral/base-sae@base"): a, Term("l0", "tiny-mistral/instruct-sae@base"): b}
    outcome = parsed.evaluate(values)
    right = scale * b - margin
    assert outcome.left == a and outcome.right == pytest.approx(right)
    assert outcome.holds == {">=": a >= right, "<=": a <= right, ">": a > right, "<": a < right}[op]
    assert "l0(base-sae@base) = " in outcome.explain(values)


def test_verdicts_of_reproduced_and_not_reproduced_claims():
    values = {Term("l0", "tiny-mistral/base-sae@base"): 5.0}
    holds, fails = claim("l0(base-sae@base) >= 1").evaluate(values), claim("l0(base-sae@base) >= 9").evaluate(values)
    assert judge(claim("l0(base-sae@base) >= 1"), holds)[0] == "passed"
    assert judge(claim("l0(base-sae@base) >= 9"), fails)[0] == "failed"
    known = claim("l0(base-sae@base) >= 9", reproduced=False, why="the zoo is denser")
    assert judge(known, fails) == ("xfailed", "not reproduced here, as the case file says: the zoo is denser")
    verdict, why = judge(claim("l0(base-sae@base) >= 1", reproduced=False, why="x"), holds)
    assert verdict == "failed" and "now holds" in why


def test_every_shipped_family_has_claims_with_sources_and_margins():
    families = {case.family for case in REGISTRY}
    assert families == {c.family for c in REGISTRY.claims.values()}
    for parsed in REGISTRY.claims.values():
        assert parsed.source and parsed.margin and (parsed.reproduced or parsed.why)


def run_pytest(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "test_claims.py"), "-p", "no:cacheprovider"]
    return subprocess.run([*command, "-rsx", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.full
def test_a_claim_over_a_case_that_cannot_run_skips_with_its_reason(tmp_path):
    result = run_pytest("-k", "qwen1.5-0.5b and base-sae-transfers-to-chat", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 skipped" in result.stdout
    assert "claim qwen1.5-0.5b::base-sae-transfers-to-chat relates cases that cannot run here" in result.stdout
    assert "qwen1.5-0.5b/base-sae@chat needs" in result.stdout
