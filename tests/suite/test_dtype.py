"""Cases in the precision their study ran: a case's `dtype` and the `--dtype` option, models keyed by dtype (two
dtypes never share a model or a pass), the dtype recorded with every value (verdict table, expectation entries,
results database), a measured value of another dtype than its case declares stale, and bad input refused before
anything runs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from sae_bench.cases.registry import METRIC_GROUPS, SHIPPED_CASES, ModelKey, load_registry, read_case_file
from sae_bench.cli import main
from sae_bench.errors import CaseFileError
from sae_bench.execution.executor import CaseExecutor
from sae_bench.expectations import rules as expectations
from sae_bench.expectations.rules import ExpectationError, ExpectationFile, MetricExpectation, read_expectations
from sae_bench.results_store.database import ResultsDB

ROOT = Path(__file__).resolve().parents[2]
CASE = "tiny-qwen2/base-sae@chat"
SHIPPED = load_registry(SHIPPED_CASES)


def _run_case(*extra: str) -> int:
    args = [str(ROOT / "benchmarks" / "test_cases.py"), "-p", "no:cacheprovider", "-q", "--case-id", CASE]
    return pytest.main([*args, "-k", "reconstruction", *extra])


def _case_file(tmp_path: Path, **fields: str) -> Path:
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in fields.items())
    path = tmp_path / "mine.toml"
    path.write_text(
        'family = "mine"\n[saes]\ns = "zoo:tiny-qwen2/base-sae"\n[models]\nchat = "zoo:tiny-qwen2/chat"\n'
        '[[case]]\nsae = "s"\nmodel = "chat"\nhook = "blocks.2.hook_resid_pre"\ndataset = "zoo:heldout"\n'
        f'tokens = 2048\ncontext = 128\ngroups = ["reconstruction"]\n{lines}'
    )
    return path


# -- the seed cases declare their study's dtype ---------------------------------------------------------------------


def test_kutsyks_cases_run_in_float16_with_his_overflow_rule_and_kissanes_in_float32():
    kutsyk = [c for c in SHIPPED if "res-wg" in c.sae or "res-jb" in c.sae]
    assert kutsyk and {c.dtype for c in kutsyk} == {"float16"}
    assert all("DTYPE = torch.float16" in c.dtype_source for c in kutsyk)
    with_ce = [c for c in kutsyk if "ce" in c.groups]
    assert with_ce and {c.overflow for c in with_ce} == {"drop-inf-batches"}
    assert all("torch.isinf" in c.overflow_source for c in with_ce)
    kissane = [c for c in SHIPPED if c.family in ("mistral-7b", "gemma-2b", "qwen1.5-0.5b") and c not in kutsyk]
    assert kissane and {c.dtype for c in kissane} == {"float32"} and all("Kissane" in c.dtype_source for c in kissane)
    scopes = [c for c in SHIPPED if c.family in ("gemma-2-2b", "gemma-2-9b", "gemma-3-1b", "gemma-3-270m")]
    assert {c.dtype for c in scopes} == {"bfloat16"} and all(c.dtype_source for c in scopes)
    assert {c.dtype for c in SHIPPED if c.tier == "zoo"} == {"float32"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dtype": "float8"}, "dtype 'float8' is not a dtype the suite runs models in"),
        ({"dtype": "torch.float16"}, "choose from float32, bfloat16, float16"),
        ({"overflow": "drop"}, "unknown overflow rule 'drop'"),
        ({"dtype": "float16", "overflow": "drop-inf-batches"}, "names no source"),
    ],
)
def test_a_dtype_or_overflow_rule_that_cannot_be_used_names_the_field(tmp_path, fields, message):
    with pytest.raises(CaseFileError, match=message):
        read_case_file(_case_file(tmp_path, **fields))


# -- execution -------------------------------------------------------------------------------------------------------


def test_two_dtypes_of_one_case_load_two_models_and_never_share_a_pass():
    case = SHIPPED.get(CASE)
    half = replace(case, id=f"{CASE}/bf16", dtype="bfloat16")
    executor = CaseExecutor()
    executor.plan([case, half])
    full_values, half_values = executor.measure(case), executor.measure(half)
    assert set(executor.model_loads) == {ModelKey(case.model, "float32"), ModelKey(case.model, "bfloat16")}
    assert [case.id] in executor.shared_passes and [half.id] in executor.shared_passes
    assert half_values["explained_variance"] != full_values["explained_variance"]
    assert half_values["explained_variance"] == pytest.approx(full_values["explained_variance"], abs=0.01)
    assert executor.sae(case.sae).W_dec.dtype.itemsize == 4  # the SAE stays in float32


# -- verdicts, expectations and the results database ----------------------------------------------------------------


def test_a_dtype_run_is_judged_against_the_float32_expectations_and_recorded_as_such(tmp_path, capsys):
    results, table = tmp_path / "results.sqlite", tmp_path / "verdicts.csv"
    expectation = ROOT / "expectations" / "tiny-qwen2" / "base-sae@chat.json"
    before = expectation.read_bytes()
    assert _run_case(f"--results={results}") == pytest.ExitCode.OK
    code = _run_case("--dtype", "bfloat16", f"--results={results}", f"--verdict-table={table}")
    assert code in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)  # judged: a precision check, not stale
    verdicts = table.read_text()
    assert "float32 → bfloat16" in verdicts and "stale" not in verdicts
    assert expectation.read_bytes() == before
    db = ResultsDB(results, read_only=True)
    assert db.measurements(1).dtype.unique().tolist() == ["float32"]
    assert db.measurements(2).dtype.unique().tolist() == ["bfloat16"]
    db.close()
    capsys.readouterr()
    args = ["compare", "--results", str(results), "--baseline", "1", "--run", "2", "--format", "csv"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another dtype than run 1 (float32 → bfloat16" in err and "--allow-other-dtype" in err
    assert main([*args, "--allow-other-dtype"]) in (0, 1)
    assert "float32 → bfloat16" in capsys.readouterr().out


def test_dtype_with_update_expectations_on_a_case_declared_in_another_is_refused(tmp_path, capsys):
    target = tmp_path / "expectations"
    shutil.copytree(ROOT / "expectations" / "tiny-qwen2", target / "tiny-qwen2")
    path = target / "tiny-qwen2" / "base-sae@chat.json"
    before = path.read_bytes()
    code = _run_case("--no-results", f"--expectations-dir={target}", "--dtype", "float16", "--update-expectations")
    assert code == pytest.ExitCode.USAGE_ERROR
    err = capsys.readouterr().err
    assert "--dtype float16 with --update-expectations" in err and CASE in err and "float32" in err
    assert path.read_bytes() == before


def test_an_unknown_dtype_is_a_usage_error(capsys):
    assert _run_case("--no-results", "--dtype", "float8") == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'float8'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", CASE, "--dtype", "float8"])
    assert raised.value.code == 2


def test_a_value_measured_in_another_dtype_than_its_case_declares_is_stale(tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    _case_file(cases, dtype="bfloat16", dtype_source="a test")
    expectations_dir = cases / "expectations" / "mine"
    expectations_dir.mkdir(parents=True)
    path = expectations_dir / "s@chat.json"
    entry = {"value": 1.0, "version": 1, "dtype": "float32", "abs": 0.1}
    metrics = {name: entry for name in METRIC_GROUPS["reconstruction"]}  # every value of the group, all stale
    path.write_text(json.dumps({"case": "mine/s@chat", "format": 2, "provenance": {}, "metrics": metrics}))
    before = path.read_bytes()
    args = [str(ROOT / "benchmarks" / "test_cases.py"), "-p", "no:cacheprovider", "-q", "--no-results"]
    args += [f"--cases-dir={cases}", "--case-id", "mine/s@chat"]
    assert pytest.main(args) == pytest.ExitCode.OK  # stale: neither passed nor failed
    out = capsys.readouterr().out
    assert "StaleExpectation" in out and "measured in float32; the case now runs in bfloat16" in out
    assert pytest.main([*args, "--strict-expectations"]) == pytest.ExitCode.USAGE_ERROR
    assert path.read_bytes() == before
    capsys.readouterr()
    assert pytest.main([*args, "--update-expectations"]) == pytest.ExitCode.OK
    assert read_expectations(path).metrics["l0"].dtype == "bfloat16"


def test_staleness_by_dtype_spares_published_values_and_runs_told_another_dtype():
    measured = ExpectationFile("f/s@m", {"kind": "measured"}, {"l0": MetricExpectation(10.0, "both", 0.5)})
    published = ExpectationFile("f/s@m", {"kind": "published", "dtype": "float16"}, dict(measured.metrics))
    assert measured.dtype_of("l0") == "float32" and published.dtype_of("l0") == "float16"
    run = dict(declared="float16", run="float16")
    assert expectations.compare(measured, {"l0": 10.0}, ["l0"], **run).verdict.tolist() == ["stale"]
    assert expectations.compare(published, {"l0": 10.0}, ["l0"], **run).verdict.tolist() == ["ok"]
    told = expectations.compare(measured, {"l0": 10.0}, ["l0"], declared="float32", run="bfloat16")
    assert told.verdict.tolist() == ["ok"] and told.dtype.tolist() == ["float32 → bfloat16"]


def test_an_entry_dtype_that_cannot_be_right_names_the_file_and_metric(tmp_path):
    path = tmp_path / "s@m.json"
    entry = {"value": 1.0, "version": 1, "dtype": "fp16", "abs": 0.1}
    path.write_text(json.dumps({"case": "f/s@m", "format": 2, "provenance": {}, "metrics": {"l0": entry}}))
    with pytest.raises(ExpectationError, match=r"s@m.json: metrics.l0.dtype 'fp16' is not a dtype"):
        read_expectations(path)
