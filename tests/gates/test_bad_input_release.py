"""Bad input to the release gate, the sweep declarations, the results store and the files the suite keeps, tried as a
new user and a CI pipeline would: each is refused (or now correct) with one message naming what, where and the fix,
the exit code of its class (the CLI's 2, argparse's usage error 2, pytest's usage error 4), no traceback, and nothing
changed under expectations/ or in the results database (docs/design.md §12). The release gate's refusals all
happen before any model loads, so each costs an SAE load at most."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_bench.cases.registry import SHIPPED_CASES, load_registries
from sae_bench.cli import main as cli
from sae_bench.expectations import files as expectation_store
from sae_bench.gates.release import judge_units, sweep_plan
from sae_bench.results_store import database as results_db
from tests.postgres_server import postgres_server
from tests.test_bad_input import (  # noqa: F401 - the two fixtures: nothing here may change expectations/
    CASE,
    EXPECTATIONS,
    assert_clear,
    shipped_digest,
    shipped_expectations_untouched,
    suite,
)

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "zoo"
RELEASES = ZOO / "saes" / "tiny-mistral"
RG = ["gate", "--baseline", "zoo:tiny-mistral/release-a-pt", "--sweep", "release-a"]
"""The release gate against the zoo's release A on its shipped sweep."""
QUICK = ["--rows-per-unit", "4", "--start-rows", "8", "--budget-rows", "8"]
"""Two units of four rows per model: enough for an interval, the least a real run of the gate costs."""


def usage_error(capsys, argv: list[str]) -> str:
    """An argparse refusal: exit 2 and its message."""
    with pytest.raises(SystemExit) as stopped:
        cli(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


def refused(capsys, argv: list[str], *needles: str) -> str:
    """The CLI says no: exit 2, one clear message holding every needle."""
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert_clear(err, *needles)
    return err


def release_copy(tmp_path: Path, name: str = "release-b-pt", edit=None) -> Path:
    """A folder release: the zoo's `name`, one SAE folder per id, each passed to `edit(folder, layer)` if given."""
    target = tmp_path / name
    shutil.copytree(RELEASES / name, target)
    for folder in sorted(target.iterdir()):
        if edit is not None:
            edit(folder, int(folder.name.removeprefix("layer_")))
    return target


def edit_cfg(**changes):
    """An `edit` for `release_copy` that rewrites cfg.json (`metadata.KEY` for metadata fields)."""

    def edit(folder: Path, layer: int) -> None:
        cfg = json.loads((folder / "cfg.json").read_text())
        for key, value in changes.items():
            value = value.format(layer=layer) if isinstance(value, str) else value
            if key.startswith("metadata."):
                cfg["metadata"][key.removeprefix("metadata.")] = value
            else:
                cfg[key] = value
        (folder / "cfg.json").write_text(json.dumps(cfg))

    return edit


def edit_weights(change):
    """An `edit` for `release_copy` that rewrites the weights with `change(tensors, layer)`."""

    def edit(folder: Path, layer: int) -> None:
        tensors = load_file(folder / "sae_weights.safetensors")
        change(tensors, layer)
        save_file(tensors, folder / "sae_weights.safetensors")

    return edit


def sweep_folder(tmp_path: Path, sweep: str, family: str = "my-mistral") -> Path:
    """A user's case folder whose one file declares the tiny-mistral models and `sweep` (a [[sweep]] table)."""
    folder = tmp_path / "cases"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{family}.toml").write_text(
        f'family = "{family}"\n'
        '[models]\nbase = "zoo:tiny-mistral/base"\ninstruct = "zoo:tiny-mistral/instruct"\n'
        '[defaults]\ndataset = "zoo:heldout"\ntokens = 4096\ncontext = 128\ngroups = ["ce"]\n\n' + sweep
    )
    return folder


SWEEP = """[[sweep]]
name = "{name}"
releases = {{ a = "zoo:tiny-mistral/release-a-pt" }}
models = ["base", "instruct"]
hook = "{hook}"
margins = {margins}
{extra}
"""


def a_sweep(name="mine", hook="blocks.{layer}.hook_resid_post", margins="{ ce_spliced = 0.0001 }", extra="") -> str:
    return SWEEP.format(name=name, hook=hook, margins=margins, extra=extra)


# --- wrong results that are now refused or correct ---------------------------------------------------------------


def test_1_widths_given_as_a_string_is_refused_not_read_character_by_character(capsys, tmp_path):
    folder = sweep_folder(tmp_path, a_sweep(extra='widths = "16k"'))
    refused(
        capsys,
        ["cases", "--cases-dir", str(folder), "--sweep", "mine"],
        "widths",
        "expected a list of widths",
        'widths = ["16k", "65k"]',
    )


def test_2_a_sweep_name_two_families_declare_is_ambiguous_and_the_family_picks_one(capsys, tmp_path):
    folder = sweep_folder(tmp_path, a_sweep(name="release-a"))
    refused(
        capsys,
        [*RG[:-1], "release-a", "--release", "zoo:tiny-mistral/release-b-pt", "--cases-dir", str(folder)],
        "--sweep 'release-a' is declared by 2 families",
        "my-mistral/release-a",
        "tiny-mistral/release-a",
    )
    registry = load_registries((SHIPPED_CASES, folder))
    assert sweep_plan(registry, "my-mistral/release-a").margins == {"ce_spliced": 0.0001}
    assert sweep_plan(registry, "tiny-mistral/release-a").margins["ce_spliced"] == 0.05


def test_2_a_family_that_declares_one_sweep_twice_is_refused(capsys, tmp_path):
    folder = sweep_folder(tmp_path, a_sweep(name="twice") + a_sweep(name="twice"))
    refused(capsys, ["cases", "--cases-dir", str(folder)], "sweep 'twice' is declared twice")
    folder = sweep_folder(tmp_path / "here", a_sweep(name="once"))
    other = sweep_folder(tmp_path / "elsewhere", a_sweep(name="once").replace("a = ", "b = "))
    refused(
        capsys,
        ["cases", "--cases-dir", str(folder), "--cases-dir", str(other)],
        "sweep 'once'",
        "family my-mistral already declares it in",
        str(folder / "my-mistral.toml"),
    )


def test_3_a_sweep_name_with_path_separators_is_refused_and_nothing_is_written(capsys, tmp_path):
    folder = sweep_folder(tmp_path, a_sweep(name="../../../escaped"))
    refused(capsys, ["cases", "--cases-dir", str(folder)], "'../../../escaped' is not a sweep name", "name =")
    code, text = suite(capsys, f"--cases-dir={folder}", "--no-results", "-k", "escaped")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, "is not a sweep name")
    assert not list(tmp_path.parent.rglob("escaped@*.json")) and not (ROOT.parent / "escaped@base.json").exists()


def test_4_a_release_trained_at_another_hook_is_refused_naming_each_id(capsys, tmp_path):
    other_hook = release_copy(tmp_path, edit=edit_cfg(**{"metadata.hook_name": "blocks.{layer}.hook_resid_pre"}))
    err = refused(
        capsys,
        [*RG, "--release", str(other_hook)],
        "4 problem(s) with the releases, nothing was run",
        f"--release {other_hook}, id layer_0",
        "reads blocks.0.hook_resid_pre",
        "hook_mismatch_ok",
    )
    assert "id layer_3" in err


def test_4_a_sweep_that_declares_hook_mismatch_ok_lets_such_a_release_through_the_check(tmp_path):
    from sae_bench.gates.release import load_releases

    other_hook = release_copy(tmp_path, edit=edit_cfg(**{"metadata.hook_name": "blocks.{layer}.hook_resid_pre"}))
    folder = sweep_folder(tmp_path, a_sweep(extra='hook_mismatch_ok = "the pre and post residuals of a block"'))
    plan = sweep_plan(load_registries((SHIPPED_CASES, folder)), "mine")
    new, old = load_releases(plan, str(other_hook), "zoo:tiny-mistral/release-a-pt")
    assert sorted(new.saes) == sorted(old.saes) == [f"layer_{i}" for i in range(4)]


def test_5_a_release_against_itself_is_nothing_to_compare(capsys, tmp_path):
    refused(
        capsys,
        [*RG, "--release", "zoo:tiny-mistral/release-a-pt"],
        "both zoo:tiny-mistral/release-a-pt",
        "nothing to compare",
    )
    copy = release_copy(tmp_path, "release-a-pt")
    refused(capsys, [*RG, "--release", str(copy)], "the same weights at every shared id (4)", "nothing to compare")


@pytest.mark.parametrize(
    ("margins", "needle"),
    [
        ("{ explained_variance = true }", "explained_variance = True is not a number or a percentage"),
        ("{ ce_spliced = inf }", "ce_spliced = inf is not a finite positive number"),
        ("{ ce_spliced = nan }", "ce_spliced = nan is not a finite positive number"),
        ("{ ce_spliced = -0.05 }", "is not a finite positive number"),
        ("{ ce_spliced = 0 }", "is not a finite positive number"),
        ('{ kl_spliced = "150%" }', "is not a percentage"),
        ('{ kl_spliced = "0%" }', "is not a percentage"),
        ('{ kl_spliced = "30 %" }', "is not a percentage"),
        ("{ l0 = 1 }", "'l0' is not a judged metric"),
        ('"30%"', "expected a table"),
    ],
    ids=[
        "boolean",
        "inf",
        "nan",
        "negative",
        "zero",
        "over-100-percent",
        "zero-percent",
        "spaced-percent",
        "unjudged-metric",
        "not-a-table",
    ],
)
def test_6_7_margins_that_are_not_finite_positive_numbers_or_percentages_are_refused(capsys, tmp_path, margins, needle):
    folder = sweep_folder(tmp_path, a_sweep(margins=margins))
    refused(
        capsys,
        [*RG[:-1], "mine", "--release", "zoo:tiny-mistral/release-b-pt", "--cases-dir", str(folder)],
        "sweep[0].margins",
        needle,
        "margins = {",
    )


@pytest.mark.parametrize("alpha", ["5", "0", "-0.1", "0.51", "nan", "abc"])
def test_8_alpha_outside_0_to_half_is_a_usage_error(capsys, alpha):
    err = usage_error(capsys, [*RG, "--release", "zoo:tiny-mistral/release-b-pt", "--alpha", alpha])
    assert "argument --alpha" in err and "Traceback" not in err


def test_8_an_interval_that_is_not_finite_is_never_ok():
    """A unit whose difference is NaN (an undefined metric slipped through as a number) makes its row inconclusive,
    whatever the other units say."""
    registry = load_registries((SHIPPED_CASES,))
    plan = sweep_plan(registry, "release-a")
    good = {"ce_spliced": 3.0, "kl_spliced": 0.1, "explained_variance": 0.9, "l0": 16.0}
    units = {("layer_0", "base"): [{"old": good, "new": good | {"ce_spliced": 3.0 + d}} for d in (0.0, 1e-4, 2e-4)]}
    assert set(judge_units(units, plan, 0.05).verdict) == {"ok"}
    units[("layer_0", "base")].append({"old": good, "new": good | {"ce_spliced": float("nan")}})
    table = judge_units(units, plan, 0.05).set_index("metric")
    assert table.loc["ce_spliced", "verdict"] == "inconclusive"
    assert table.loc["kl_spliced", "verdict"] == "ok"


@pytest.mark.parametrize(
    "extra",
    [
        ["--sae", "zoo:tiny-mistral/base-sae"],
        ["--cases", "x"],
        ["--rehearse"],
        ["--ray"],
        ["--ray", "auto"],
        ["--device-memory", "8"],
    ],
    ids=["sae", "cases", "rehearse", "ray-local", "ray-address", "device-memory"],
)
def test_9_the_release_gate_refuses_the_single_gates_options(capsys, extra):
    flag = extra[0]
    refused(
        capsys,
        [*RG, "--release", "zoo:tiny-mistral/release-b-pt", *extra],
        f"{flag} is an option of the single-SAE gate",
        "does not honour them",
    )


@pytest.mark.parametrize(
    "extra",
    [
        ["--sweep", "release-a"],
        ["--alpha", "0.1"],
        ["--rows-per-unit", "2"],
        ["--start-rows", "8"],
        ["--budget-rows", "64"],
        ["--report", "out"],
        ["--allow-removed"],
    ],
    ids=["sweep", "alpha", "rows-per-unit", "start-rows", "budget-rows", "report", "allow-removed"],
)
def test_9_the_single_sae_gate_refuses_the_release_gates_options(capsys, tmp_path, extra):
    refused(
        capsys,
        ["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", CASE, *extra],
        f"{extra[0]} is an option of the release gate",
        "Drop them",
    )


@pytest.mark.full
def test_9_the_release_gate_honours_junit_table_and_results_and_records_both_releases(capsys, tmp_path, monkeypatch):
    """--junit, --table and --results on a real (two-unit) gate of release B against release A; the run is recorded
    with both releases' specs and hashes, and each judged difference."""
    from xml.etree import ElementTree

    database = tmp_path / "results.sqlite"
    out = [f"--junit={tmp_path / 'gate.xml'}", f"--table={tmp_path / 'gate.md'}", f"--results={database}"]
    code = cli([*RG, "--release", "zoo:tiny-mistral/release-b-pt", *QUICK, *out])
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err[-2000:]
    suite_xml = ElementTree.parse(tmp_path / "gate.xml").getroot()
    assert int(suite_xml.get("tests")) == 4 * 2 * 3  # ids × models × judged metrics
    properties = {p.get("name"): p.get("value") for p in suite_xml.find("testcase").iter("property")}
    assert properties["release_sae"] == "zoo:tiny-mistral/release-b-pt/layer_0"
    assert properties["baseline_sae"] == "zoo:tiny-mistral/release-a-pt/layer_0"
    assert len(properties["release_sae_sha256"]) == len(properties["baseline_sae_sha256"]) == 64
    assert (tmp_path / "gate.md").read_text().count("layer_") == 24
    with sqlite3.connect(database) as db:
        (selection, exit_status), *_ = db.execute("SELECT selection, exit_status FROM runs").fetchall()
        recorded = json.loads(selection)
        assert recorded["--release"]["source"] == "zoo:tiny-mistral/release-b-pt"
        assert recorded["--baseline"]["sha256"]["layer_0"] == properties["baseline_sae_sha256"]
        assert exit_status == code
        counts = "SELECT COUNT(*), COUNT(DISTINCT case_id), COUNT(DISTINCT sae_fingerprint) FROM measurements"
        assert db.execute(counts).fetchone() == (24, 8, 4)  # 3 differences of 8 (id, model) pairs; 4 new SAEs


@pytest.mark.full
def test_10_11_a_results_url_never_shows_or_stores_its_password(capsys, monkeypatch):
    """compare prints no secret of the URL; a run on the real PostgreSQL server the test starts stores its command
    line without them (the server trusts any password)."""
    secret = "hunter2-secret"
    refused(
        capsys,
        ["compare", "--results", f"postgresql://ci@127.0.0.1:1/x?password={secret}&sslmode=disable"],
        "cannot connect to the results store",
        "password=***",
    )
    refused(capsys, ["compare", "--results", f"postgresql://ci:{secret}@127.0.0.1:1/x?sslpassword={secret}"], "ci:***@")
    with postgres_server() as url:
        monkeypatch.setenv("PGPASSWORD", "pg-env-secret")
        secret_url = url.replace("postgres@", f"postgres:{secret}@") + f"?password={secret}&application_name=t"
        db = results_db.ResultsDB(secret_url)
        assert secret not in str(db.path)
        run = db.start_run(
            selection=f"pytest benchmarks --results={secret_url} pg-env-secret",
            device="cpu",
            git_commit=None,
            versions={},
        )
        stored = db.scalar("SELECT selection FROM runs WHERE id = ?", (run,))
        assert secret not in stored and "pg-env-secret" not in stored and "password=***" in stored
        db.close()


def test_12_an_atomic_rewrite_keeps_the_files_mode(tmp_path):
    path = tmp_path / "base-sae@chat.json"
    path.write_text("{}")
    path.chmod(0o644)
    expectation_store.write_atomic(path, '{"a": 1}')
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == '{"a": 1}'
    path.chmod(0o640)
    expectation_store.write_atomic(path, "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    new = tmp_path / "new.json"
    expectation_store.write_atomic(new, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask


def small_zoo(tmp_path: Path, *folders: str) -> Path:
    """A zoo holding only `folders` (relative to the zoo) and the shipped manifest: enough to load them."""
    root = tmp_path / "zoo"
    for folder in folders:
        shutil.copytree(ZOO / folder, root / folder)
    shutil.copy(ZOO / "manifest.json", root / "manifest.json")
    return root


def test_13_a_zoo_file_missing_from_the_manifest_is_refused_naming_it(capsys, tmp_path, monkeypatch):
    root = small_zoo(tmp_path, "saes/tiny-qwen2/base-sae")
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["files"]["saes/tiny-qwen2/base-sae/sae_weights.safetensors"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    weights = root / "saes/tiny-qwen2/base-sae/sae_weights.safetensors"
    tensors = load_file(weights)
    tensors["W_dec"] = torch.flip(tensors["W_dec"], dims=[0])  # a corrupted SAE
    save_file(tensors, weights)
    monkeypatch.setenv("SAE_BENCH_ZOO", str(root))
    refused(
        capsys,
        ["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", CASE, "--no-results"],
        "zoo file saes/tiny-qwen2/base-sae/sae_weights.safetensors is not in the manifest",
        "cannot be verified",
        "git checkout -- zoo/",
    )


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda root: (root / "manifest.json").write_text('{"files": {'), "the zoo manifest"),
        (lambda root: (root / "manifest.json").write_bytes(b"\xff\xfe"), "is damaged"),
        (
            lambda root: (root / "saes/tiny-qwen2/base-sae/sae_weights.safetensors").write_bytes(b"\0" * 64),
            "does not match the manifest",
        ),
        (lambda root: (root / "saes/tiny-qwen2/base-sae/cfg.json").write_text("{"), "does not match the manifest"),
    ],
    ids=["manifest-truncated", "manifest-not-utf8", "weights-damaged", "cfg-damaged"],
)
def test_damaged_zoo_files_are_one_message(capsys, tmp_path, monkeypatch, damage, needle):
    root = small_zoo(tmp_path, "saes/tiny-qwen2/base-sae")
    damage(root)
    monkeypatch.setenv("SAE_BENCH_ZOO", str(root))
    refused(capsys, ["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", CASE, "--no-results"], needle)


def test_14_a_killed_writers_temporary_file_is_reported_and_removed_by_the_next_writer(capsys, tmp_path):
    expectations = tmp_path / "expectations"
    shutil.copytree(EXPECTATIONS / "tiny-qwen2", expectations / "tiny-qwen2")
    path = expectations / "tiny-qwen2" / "base-sae@chat.json"
    left = path.with_name(f".{path.name}.k1ll3d.tmp")
    left.write_text(path.read_text()[:100])  # what a writer killed mid-write leaves
    args = ("--case-id", CASE, f"--expectations-dir={expectations}", "--no-results", "--collect-only")
    code, text = suite(capsys, *args)
    assert code == pytest.ExitCode.OK
    assert_clear(text, "temporary file(s) left by an expectation writer that was killed", left.name)
    code, text = suite(capsys, *args, "--strict-expectations")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, left.name, "--strict-expectations")
    with expectation_store.locked(path):
        expectation_store.write_atomic(path, path.read_text())
    assert not left.exists()


def test_14_a_live_writers_temporary_file_is_not_called_stale(tmp_path):
    path = tmp_path / "family" / "case.json"
    path.parent.mkdir()
    live = path.with_name(f".{path.name}.l1ve.tmp")
    live.write_text("")
    with expectation_store.locked(path):
        assert expectation_store.stale_temporaries(tmp_path) == []
    assert expectation_store.stale_temporaries(tmp_path) == [live]


def test_15_help_and_usage_errors_record_nothing(capsys, tmp_path, monkeypatch):
    database = tmp_path / "results.sqlite"
    monkeypatch.setenv("SAE_BENCH_RESULTS", str(database))
    assert cli(["run", "--help"]) == 0
    assert not database.exists()
    code, text = suite(capsys, "--case-id", "tiny-qwen2/base-sae@chatt", f"--results={database}")
    assert code == pytest.ExitCode.USAGE_ERROR
    code, text = suite(capsys, "--case-id", CASE, f"--results={database}", "--collect-only")
    assert code == pytest.ExitCode.OK
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


# --- the unclear classes: one message, its exit class -------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1:1", "bad address!!", "ray://127.0.0.1:99999", "127.0.0.1"])
def test_a_ray_address_that_is_wrong_or_silent_fails_within_seconds(capsys, address):
    started = time.monotonic()
    code, text = suite(capsys, "--case-id", CASE, "--no-results", f"--ray={address}")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(
        text,
        f"--ray {address!r}"
        if "!" in address or "99999" in address or ":" not in address
        else "nothing answers at 127.0.0.1:1",
    )
    refused(capsys, ["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", CASE, "--ray", address], "--ray")
    assert time.monotonic() - started < 60  # Ray itself retried for minutes


def test_a_busy_results_database_says_busy(capsys, tmp_path, monkeypatch):
    database = tmp_path / "results.sqlite"
    results_db.ResultsDB(database).close()
    monkeypatch.setattr(results_db, "BUSY_WAIT_S", 0.5)
    holder = sqlite3.connect(database)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, text = suite(capsys, "--case-id", CASE, f"--results={database}")
    finally:
        holder.rollback()
        holder.close()
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, f"the results database {database} is busy", "another process held its write lock")


@pytest.mark.full
def test_a_read_only_results_database_says_read_only(tmp_path):
    """`sae-bench run` as a user that cannot write the file: the tests' user when it is not root; root without the
    capability that lets it write any file (`setpriv`) when it is."""
    database = tmp_path / "results.sqlite"
    results_db.ResultsDB(database).close()
    database.chmod(0o444)
    command = [
        sys.executable,
        "-m",
        "sae_bench.cli",
        "run",
        "--case-id",
        CASE,
        f"--results={database}",
        "-p",
        "no:cacheprovider",
    ]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: no process here lacks write permission")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    text = run.stdout + run.stderr
    assert_clear(text, f"cannot write the results database {database}: it is read-only", "--no-results")


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "--sweep", "tiny-mistral/release-a", "--gpus", "0"],
        ["plan", "--sweep", "tiny-mistral/release-a", "--gpu-memory", "-80"],
        ["plan", "--sweep", "tiny-mistral/release-a", "--gpu-memory", "inf"],
        ["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", CASE, "--device-memory", "-5"],
        [*RG, "--release", "zoo:tiny-mistral/release-b-pt", "--rows-per-unit", "0"],
        [*RG, "--release", "zoo:tiny-mistral/release-b-pt", "--start-rows", "0"],
        [*RG, "--release", "zoo:tiny-mistral/release-b-pt", "--budget-rows", "0"],
        [*RG, "--release", "zoo:tiny-mistral/release-b-pt", "--budget-rows", "1.5"],
        ["zoo", "card", "--tokens", "0"],
    ],
    ids=[
        "gpus-0",
        "gpu-memory-negative",
        "gpu-memory-inf",
        "device-memory-negative",
        "rows-per-unit-0",
        "start-rows-0",
        "budget-rows-0",
        "budget-rows-fraction",
        "card-tokens-0",
    ],
)
def test_numeric_options_are_range_checked_before_anything_loads(capsys, argv):
    option = next(a for a in reversed(argv) if a.startswith("--"))
    err = usage_error(capsys, argv)
    assert f"argument {option}" in err and "Traceback" not in err


def test_pytest_device_memory_is_range_checked(capsys):
    code, text = suite(capsys, "--device-memory=-1", "--no-results", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, "argument --device-memory", "is out of range: give a memory size in GB")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (
            [*RG, "--release", "zoo:tiny-mistral/release-b-pt", "--start-rows", "64", "--budget-rows", "32"],
            ["--start-rows 64 exceeds --budget-rows 32"],
        ),
        ([*RG, "--release", "zoo:tiny-mistral/release-b-pt", "--start-rows", "4"], ["fewer than 2 units"]),
        (
            [*RG, "--release", "zoo:tiny-mistral/release-b-pt", "--results", "x.sqlite", "--no-results"],
            ["--results and --no-results contradict"],
        ),
        (["plan", "-k", "no-such-case-anywhere"], ["selects no case"]),
        (["plan", "--sweep", "tiny-mistral/release-a", "--calibration", __file__], ["is not a calibration file"]),
        (["expectations", "published", "--root", __file__], ["--root", "is a file; give a folder"]),
        (["cases", "--sweep", ""], ["no sweep ''"]),
        (["plan", "--sweep", "tiny-mistral/release-a", "--device", "banana"], ["--device 'banana' is not a torch"]),
    ],
    ids=[
        "start-over-budget",
        "one-unit",
        "results-and-no-results",
        "plan-selects-nothing",
        "not-a-calibration",
        "published-root-file",
        "empty-sweep-name",
        "plan-bad-device",
    ],
)
def test_option_combinations_are_refused_before_anything_runs(capsys, argv, needles):
    refused(capsys, argv, *needles)


def test_calibrate_checks_the_device_first(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(capsys, ["calibrate", "--device", "cuda"], "--device cuda: torch sees no CUDA device")


@pytest.mark.parametrize("command", ["pytest", "cli"])
def test_an_empty_cases_folder_is_one_message(capsys, tmp_path, command):
    if command == "pytest":
        code, text = suite(capsys, f"--cases-dir={tmp_path}", "--no-results", "--collect-only")
        assert code == pytest.ExitCode.USAGE_ERROR
        assert_clear(text, f"{tmp_path} holds no case files (*.toml)")
    else:
        refused(capsys, ["cases", "--cases-dir", str(tmp_path)], "holds no case files")


def test_a_case_file_that_is_not_utf8_is_one_message(capsys, tmp_path):
    (tmp_path / "latin.toml").write_bytes('family = "caf\xe9"\n'.encode("latin-1"))
    code, text = suite(capsys, f"--cases-dir={tmp_path}", "--no-results", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, "latin.toml: encoding: not UTF-8 text", "save it as UTF-8")


@pytest.mark.parametrize(
    ("sweep", "needles"),
    [
        (
            a_sweep(hook="blocks.{lyr}.hook_resid_post"),
            ["unknown placeholder {lyr}", "the known placeholders: {layer}"],
        ),
        (a_sweep(hook="blocks.{layer.hook_resid_post"), ["sweep[0].hook", "not a template"]),
        (a_sweep(hook="blocks.{}.hook_resid_post"), ["unknown placeholder {}"]),
        (a_sweep(extra='variants = { mask = "rollout" }'), ["variants", "expected a list of tables"]),
        (a_sweep(extra="layers = [40, 50]"), ["layers = [40, 50] keeps none of release a's 4 ids"]),
        (a_sweep(extra='ids = "layer_9"'), ["ids = 'layer_9' keeps none"]),
        (a_sweep(extra='ids = "layer_[01]"\nlayers = [2, 3]'), ["the filters together keep"]),
        (a_sweep(extra="ids = 3"), ["sweep[0].ids", "not a regular expression"]),
        (a_sweep(extra='margin_basis = ["why"]'), ["margin_basis", "expected a string"]),
        ('[sweep]\nname = "mine"\n', ["expected [[sweep]] tables"]),
    ],
    ids=[
        "unknown-placeholder",
        "broken-template",
        "empty-placeholder",
        "variants-table",
        "layers-keep-none",
        "ids-keep-none",
        "filters-together",
        "ids-not-string",
        "basis-not-string",
        "sweep-not-a-table",
    ],
)
def test_sweep_declarations_are_checked_like_cases(capsys, tmp_path, sweep, needles):
    folder = sweep_folder(tmp_path, sweep)
    code, text = suite(capsys, f"--cases-dir={folder}", "--no-results", "--collect-only")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert_clear(text, str(folder / "my-mistral.toml"), *needles)


def test_grid_variants_written_as_a_table_are_refused(capsys, tmp_path):
    folder = sweep_folder(tmp_path, '[[grid]]\nsaes = ["x"]\nmodels = ["base"]\nvariants = { mask = "rollout" }\n')
    (folder / "my-mistral.toml").write_text(
        (folder / "my-mistral.toml")
        .read_text()
        .replace("[models]", '[saes]\nx = "zoo:tiny-mistral/base-sae"\n[models]')
    )
    refused(capsys, ["cases", "--cases-dir", str(folder)], "grid[0].variants", "expected a list of tables")


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (
            edit_weights(lambda t, layer: t["W_dec"].fill_(float("nan")) if layer == 2 else None),
            ["id layer_2", "NaN/Inf in ['W_dec']"],
        ),
        (
            edit_weights(lambda t, layer: [v.zero_() for v in t.values()]),
            ["id layer_0", "all zeros: not a trained SAE"],
        ),
        (edit_cfg(**{"metadata.model_name": "zoo:tiny-qwen2/base"}), ["id layer_1", "trained on zoo:tiny-qwen2/base"]),
        (edit_cfg(d_in=64), ["id layer_3", "cannot load"]),
    ],
    ids=["nan-at-one-id", "all-zero", "another-family", "wrong-width"],
)
def test_the_paired_gate_names_the_release_and_id_of_an_sae_it_cannot_use(capsys, tmp_path, edit, needles):
    bad = release_copy(tmp_path, edit=edit)
    refused(capsys, [*RG, "--release", str(bad)], f"--release {bad}", "nothing was run", *needles)
    refused(
        capsys,
        ["gate", "--release", "zoo:tiny-mistral/release-b-pt", "--baseline", str(bad), "--sweep", "release-a"],
        f"--baseline {bad}",
    )


def test_a_release_that_is_not_there_is_named(capsys, tmp_path):
    refused(capsys, [*RG, "--release", str(tmp_path / "nope")], "--release", "is not a folder of SAE folders")
    refused(capsys, [*RG, "--release", "zoo:tiny-mistral/release-z-pt"], "no zoo release")


def test_unusable_output_paths_of_the_release_gate_are_found_before_the_run(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    base = [*RG, "--release", "zoo:tiny-mistral/release-b-pt"]
    refused(capsys, [*base, "--table", str(tmp_path / "none" / "t.md")], "--table", "does not exist")
    refused(capsys, [*base, "--junit", str(tmp_path)], "--junit", "is a folder")
    refused(capsys, [*base, "--report", str(tmp_path / "file" / "report")], "--report", "is a file")


def test_a_zoo_build_of_nothing_is_one_message(capsys, tmp_path):
    refused(capsys, ["zoo", "build", "--only", "nothing", "--root", str(tmp_path)], "--only 'nothing' names nothing")
    assert not list(tmp_path.iterdir())
