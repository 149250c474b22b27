"""Expectation semantics: direction, abs/rel tolerance, improved vs regression, update keeps tolerances, errors."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sae_bench.expectations import rules as expectations
from sae_bench.expectations.rules import ExpectationError, ExpectationFile, MetricExpectation, read_expectations


def test_higher_is_better_direction():
    e = MetricExpectation(value=0.9, direction="higher", abs=0.01)
    assert [e.verdict(v) for v in (0.9, 0.895, 0.88, 0.92)] == ["ok", "ok", "regression", "improved"]


def test_lower_is_better_direction():
    e = MetricExpectation(value=2.0, direction="lower", rel=0.05)
    assert [e.verdict(v) for v in (2.09, 2.11, 1.8)] == ["ok", "regression", "improved"]


def test_both_directions_regress_on_any_move_beyond_tolerance():
    e = MetricExpectation(value=10.0, direction="both", abs=0.5)
    assert [e.verdict(v) for v in (10.4, 10.6, 9.4)] == ["ok", "regression", "regression"]


def test_threshold_is_the_larger_of_abs_and_rel():
    assert MetricExpectation(value=100.0, direction="both", abs=1.0, rel=0.05).threshold == 5.0
    assert MetricExpectation(value=1.0, direction="both", abs=0.2, rel=0.05).threshold == 0.2


def test_undefined_values():
    defined = MetricExpectation(value=0.5, direction="higher", abs=0.1)
    undefined = MetricExpectation(value=None, direction="higher")
    assert defined.verdict(None) == "regression" and defined.verdict(float("nan")) == "regression"
    assert undefined.verdict(None) == "ok" and undefined.verdict(0.3) == "improved"


@given(st.floats(-1e6, 1e6), st.floats(0, 1e3), st.floats(-1e3, 1e3))
def test_verdict_is_ok_exactly_within_the_threshold(value, tol, move):
    e = MetricExpectation(value=value, direction="both", abs=tol)
    assert (e.verdict(value + move) == "ok") == (abs((value + move) - value) <= tol)


def _write(tmp_path, document) -> object:
    path = tmp_path / "case.json"
    path.write_text(json.dumps(document))
    return path


def test_update_rewrites_values_and_keeps_tolerances(tmp_path):
    path = _write(
        tmp_path,
        {
            "case": "f/s@m",
            "provenance": {"kind": "measured"},
            "metrics": {"l0": {"value": 10.0, "abs": 0.5, "direction": "both", "basis": "spread"}},
        },
    )
    old = read_expectations(path)
    new, diff = expectations.updated(old, "f/s@m", {"l0": 12.0}, ["l0"], {"kind": "measured", "date": "x"})
    assert new.metrics["l0"].value == 12.0 and new.metrics["l0"].abs == 0.5 and new.metrics["l0"].basis == "spread"
    assert diff.to_dict("records") == [{"metric": "l0", "old": 10.0, "new": 12.0, "definition": "v1"}]
    path.write_text(new.to_json())
    assert read_expectations(path).metrics["l0"].value == 12.0


def test_new_metrics_take_the_measured_spread_or_are_left_out(tmp_path):
    new, _ = expectations.updated(None, "f/s@m", {"l0": 3.0, "mse": 1.0}, ["l0", "mse"], {}, {"l0": 0.2, "mse": None})
    assert new.metrics["l0"].abs == 0.2 and "mse" not in new.metrics


def test_spread_tolerance_is_three_standard_errors():
    values = [1.0, 2.0, 3.0, 4.0]
    sd = (sum((v - 2.5) ** 2 for v in values) / 3) ** 0.5
    assert expectations.spread_tolerance(values, value=2.5) == pytest.approx(3 * sd / 2)
    assert expectations.spread_tolerance([1.0, None], value=1.0) is None
    assert expectations.spread_tolerance([5.0, 5.0, 5.0], value=5.0) == pytest.approx(5e-5)  # float floor


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"case": "c", "metrics": {}}, "missing top-level field 'provenance'"),
        ({"case": "c", "provenance": {}, "metrics": {"l0": {"abs": 1}}}, r"metrics\.l0: expected a table with value"),
        ({"case": "c", "provenance": {}, "metrics": {"l0": {"value": "x"}}}, r"metrics\.l0\.value: expected a finite"),
        (
            {"case": "c", "provenance": {}, "metrics": {"l0": {"value": 1, "direction": "up"}}},
            r"metrics\.l0\.direction: 'up' is not one of",
        ),
        ({"case": "c", "provenance": {}, "metrics": {"l0": {"value": 1, "tol": 1}}}, r"unknown fields \['tol'\]"),
        ({"case": "c", "provenance": {}, "metrics": {"l0": {"value": 1, "abs": -1}}}, "tolerances must be"),
    ],
)
def test_malformed_files_name_the_file_and_field(tmp_path, document, message):
    path = _write(tmp_path, document)
    with pytest.raises(ExpectationError, match=message) as err:
        read_expectations(path)
    assert str(path) in str(err.value)


def test_compare_builds_the_verdict_table(tmp_path):
    path = _write(
        tmp_path,
        {
            "case": "c",
            "provenance": {},
            "metrics": {
                "ce_loss_recovered": {"value": 0.9, "abs": 0.01, "direction": "higher"},
                "mse": {"value": 1.0, "rel": 0.1, "direction": "lower"},
            },
        },
    )
    table = expectations.compare(
        read_expectations(path), {"ce_loss_recovered": 0.5, "mse": 0.5}, ["ce_loss_recovered", "mse", "l0"]
    )
    assert table.verdict.tolist() == ["regression", "improved"]
    assert "| ce_loss_recovered |" in expectations.verdict_markdown(table)


def test_every_shipped_expectation_file_parses():
    from pathlib import Path

    root = Path(__file__).parents[2] / "expectations"
    files = sorted(root.rglob("*.json"))
    assert files
    for path in files:
        bundle = expectations.is_bundle(json.loads(path.read_text()))  # a sweep's file: one per sweep and model
        for expected in expectations.read_bundle(path).values() if bundle else [read_expectations(path)]:
            assert expected.provenance.get("kind") in ("measured", "published"), path


def _published(tmp_path):
    return read_expectations(
        _write(
            tmp_path,
            {
                "case": "f/s@m",
                "provenance": {"kind": "published", "source": "A paper", "table": "Table 1"},
                "metrics": {"l0": {"value": 10.0, "rel": 0.05, "direction": "both", "basis": "paper spread"}},
            },
        )
    )


def test_a_measured_run_never_replaces_a_published_value(tmp_path):
    with pytest.raises(ExpectationError, match="published values"):
        expectations.updated(_published(tmp_path), "f/s@m", {"l0": 12.0}, ["l0"], {"kind": "measured"})


def test_replacing_a_published_value_keeps_it_and_its_source(tmp_path):
    measured = {"kind": "measured", "command": "pytest …", "date": "x"}
    new, _ = expectations.updated(_published(tmp_path), "f/s@m", {"l0": 12.0}, ["l0"], measured, replace_published=True)
    metric = new.metrics["l0"]
    assert metric.value == 12.0 and metric.rel == 0.05 and metric.basis == "paper spread"
    assert metric.provenance["kind"] == "measured"
    assert metric.provenance["replaces"] == {
        "value": 10.0,
        "version": 1,
        "dtype": "float32",
        "provenance": {"kind": "published", "source": "A paper", "table": "Table 1"},
    }
    assert new.provenance["kind"] == "published"  # the file still says where its other values come from


@pytest.mark.parametrize(
    ("direction", "got", "verdict"),
    [
        ("higher", -2662.0, "ok"),
        ("higher", 0.01, "ok"),
        ("higher", 0.5, "improved"),
        ("lower", 9.0, "ok"),
        ("lower", 0.2, "improved"),
    ],
)
def test_one_sided_expectation_accepts_anything_at_least_as_bad(direction, got, verdict):
    bound = 0.0 if direction == "higher" else 1.0
    expectation = MetricExpectation(bound, direction, abs=0.02, one_sided=True)
    assert expectation.verdict(got) == verdict
    assert expectation.verdict(None) == "regression"


def test_one_sided_needs_a_direction(tmp_path):
    with pytest.raises(ValueError, match="one-sided"):
        MetricExpectation(0.0, "both", one_sided=True)
    path = _write(tmp_path, {"case": "f/s@m", "provenance": {}, "metrics": {"l0": {"value": 1, "one_sided": True}}})
    with pytest.raises(ExpectationError, match="one_sided"):
        read_expectations(path)


def _increment_under_lock(path, times):
    from sae_bench.expectations import files as expectation_store

    for _ in range(times):
        with expectation_store.locked(path):
            value = int(path.read_text())
            expectation_store.write_atomic(path, str(value + 1))


def test_the_expectation_lock_excludes_and_leaves_nothing_beside_the_files(tmp_path):
    """Two processes × 300 read-increment-writes under the lock lose none (an unlinked lock file let both in)."""
    import multiprocessing

    path = tmp_path / "expectations" / "case.json"
    path.parent.mkdir()
    path.write_text("0")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_increment_under_lock, args=(path, 300)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert int(path.read_text()) == 600
    assert sorted(p.name for p in path.parent.iterdir()) == ["case.json"]


def test_an_atomic_write_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch):
    import os

    from sae_bench.expectations import files as expectation_store

    path = tmp_path / "case.json"
    path.write_text("old")

    def failing_replace(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        expectation_store.write_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["case.json"]


def test_update_keeps_every_replaced_value_in_the_metric_provenance(tmp_path):
    old = ExpectationFile("f/s@m", {"kind": "measured", "date": "then"}, {"l0": MetricExpectation(10.0, "both", 0.5)})
    new, diff = expectations.updated(old, "f/s@m", {"l0": 12.0}, ["l0"], {"kind": "measured", "date": "now"})
    provenance = new.metrics["l0"].provenance
    assert provenance["date"] == "now" and provenance["replaces"] == {
        "value": 10.0,
        "version": 1,
        "dtype": "float32",
        "provenance": old.provenance,
    }
    again, _ = expectations.updated(new, "f/s@m", {"l0": 13.0}, ["l0"], {"kind": "measured", "date": "later"})
    assert again.metrics["l0"].provenance["replaces"]["value"] == 12.0  # one level: the value it replaced
    assert "replaces" not in again.metrics["l0"].provenance["replaces"]["provenance"]


def test_update_expectations_prints_each_change_outside_the_capture(tmp_path, capsys):
    """A case that regressed is updated: the run says so at the end (old → new, verdict before), and the file keeps
    the old value in the metric's provenance."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    target = tmp_path / "expectations"
    shutil.copytree(root / "expectations" / "tiny-qwen2", target / "tiny-qwen2")
    path = target / "tiny-qwen2" / "base-sae@chat.json"
    document = json.loads(path.read_text())
    true_l0 = document["metrics"]["l0"]["value"]
    document["metrics"]["l0"]["value"] = true_l0 + 5  # as if the case had moved away from its file
    path.write_text(json.dumps(document))
    args = [str(root / "benchmarks" / "test_cases.py"), "-p", "no:cacheprovider", "-q", "--no-results"]
    args += ["--case-id", "tiny-qwen2/base-sae@chat", "-k", "reconstruction", f"--expectations-dir={target}"]
    code = pytest.main([*args, "--update-expectations"])
    out = capsys.readouterr().out
    assert code == 0
    summary = out.split("expectations updated", 1)[1]
    assert "| l0 " in summary and "regression" in summary and str(path) in summary
    updated = read_expectations(path).metrics["l0"]
    assert abs(updated.value - true_l0) <= updated.threshold  # re-measured here: within the file's own tolerance
    assert updated.provenance["replaces"]["value"] == true_l0 + 5
    assert not list(target.rglob("*.lock")) and not list(target.rglob("*.tmp"))


def test_a_sweep_keeps_one_expectation_file_per_model_and_judges_each_case(tmp_path, capsys):
    """First run: one file per (sweep, model) holding every case's values; second run: every case judged against
    its entry; a case the sweep no longer expands to is an orphan entry (an error under --strict-expectations)."""
    from pathlib import Path

    from sae_lens import StandardSAE, StandardSAEConfig

    root = Path(__file__).resolve().parents[2]
    cases = tmp_path / "cases"
    for layer in (1, 2):
        torch.manual_seed(layer)
        config = StandardSAEConfig(d_in=128, d_sae=64)
        config.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
        StandardSAE(config).save_model(cases / "saes" / f"layer_{layer}")
    text = (
        'family = "my-release"\n[models]\nbase = "zoo:tiny-mistral/base"\ninstruct = "zoo:tiny-mistral/instruct"\n'
        '[[sweep]]\nname = "rel"\nreleases = { pt = "saes" }\nmodels = ["base", "instruct"]\n'
        'hook = "blocks.{layer}.hook_resid_post"\ndataset = "zoo:heldout"\ntokens = 1024\ncontext = 128\n'
        'groups = ["reconstruction", "ce"]\n'
    )
    (cases / "my-release.toml").write_text(text)
    args = [str(root / "benchmarks" / "test_cases.py"), "-p", "no:cacheprovider", "-q", "--no-results"]
    args += [f"--cases-dir={cases}", "-k", "my-release"]
    assert pytest.main(args) == pytest.ExitCode.TESTS_FAILED  # first run: wrote the files, to be reviewed
    assert "wrote new" in capsys.readouterr().out
    files = sorted((cases / "expectations" / "my-release").iterdir())
    assert [f.name for f in files] == ["rel@base.json", "rel@instruct.json"]
    bundle = expectations.read_bundle(files[0])
    assert sorted(bundle) == ["my-release/pt/layer_1@base", "my-release/pt/layer_2@base"]
    assert {"l0", "ce_loss_recovered"} <= set(bundle["my-release/pt/layer_1@base"].metrics)
    assert pytest.main(args) == pytest.ExitCode.OK  # judged against them
    capsys.readouterr()
    (cases / "my-release.toml").write_text(
        text.replace('models = ["base", "instruct"]', 'models = ["base"]\nlayers = [2, 2]')
    )
    assert pytest.main([*args, "--strict-expectations", "--collect-only"]) == pytest.ExitCode.USAGE_ERROR
    out = capsys.readouterr()
    assert "rel@instruct.json" in out.err + out.out and "cases.my-release/pt/layer_1@base" in out.err + out.out
