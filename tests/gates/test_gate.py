"""`sae-bench gate` fails closed: an unchanged SAE passes, a regressing one is 1, one that cannot be evaluated (or
stand in the selected cases) is 2, whatever the `--cases` expression's terms; every verdict row and JUnit entry
names the SAE that was evaluated, by spec and sha256."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sae_bench.cli import main as cli
from sae_bench.expectations.rules import read_expectations
from sae_bench.sources.checked_sae import weights_sha256
from sae_bench.sources.loading import load_sae

EXPECTATIONS = Path(__file__).resolve().parents[2] / "expectations"

CASES = "tiny-qwen2/base-sae@chat and not filtered and not rollout and not user-prompt"


def gate(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sae_bench.cli", "gate", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def saved(sae, path: Path) -> Path:
    sae.save_model(path)
    return path


@pytest.fixture(scope="module")
def broken_sae(tmp_path_factory):
    """The base SAE with its decoder rows shuffled: every feature writes another feature's direction."""
    sae = load_sae("zoo:tiny-qwen2/base-sae")
    with torch.no_grad():
        sae.W_dec.copy_(sae.W_dec[torch.randperm(sae.W_dec.shape[0], generator=torch.Generator().manual_seed(0))])
    return saved(sae, tmp_path_factory.mktemp("broken-sae"))


@pytest.mark.full
def test_unchanged_sae_passes_its_gate_and_every_row_names_it(tmp_path):
    table, junit = tmp_path / "verdicts.csv", tmp_path / "gate.xml"
    spec = "zoo:tiny-qwen2/base-sae"
    result = gate("--sae", spec, "--cases", CASES, "--table", str(table), "--junit", str(junit), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    rows = pd.read_csv(table)
    sha = weights_sha256(load_sae(spec))
    assert len(rows) and (rows.verdict != "regression").all()
    assert (rows.sae == spec).all() and (rows.sae_sha256 == sha).all()
    xml = junit.read_text()
    assert xml.count(f'name="sae_sha256" value="{sha}"') == xml.count("<testcase") > 0
    assert f"ok: {spec} (sha256 {sha[:16]}" in result.stdout


@pytest.mark.full
def test_a_regressing_sae_fails_whatever_terms_the_expression_has(tmp_path, broken_sae):
    """`… and kl` names a group: the SAE is replaced in the case the expression selects an item of, not only in
    cases whose id matches the whole expression (which ran the old SAE and passed)."""
    table, junit = tmp_path / "verdicts.md", tmp_path / "gate.xml"
    result = gate(
        "--sae", str(broken_sae), "--cases", "tiny-qwen2/base-sae@chat and kl", "--table", str(table),
        "--junit", str(junit), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    failure = result.stdout.split("FAILURES", 1)[1]
    assert "| metric" in failure and "kl_spliced" in failure and "| regression" in failure
    text = table.read_text()
    assert "regression" in text and "zoo:tiny-qwen2/base-sae" not in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny-qwen2/")]
    sha = weights_sha256(load_sae(str(broken_sae)))
    assert len(rows) == 12 and all(f"| {broken_sae} | {sha} |" in row for row in rows)  # 4 cases' kl items
    assert "<testsuite" in junit.read_text() and str(broken_sae) in junit.read_text()


@pytest.mark.full
def test_a_broken_sae_fails_the_claims_it_enters(tmp_path, broken_sae):
    """The gate runs the claims that relate a replaced case; the other side keeps its own SAE and value."""
    result = gate("--sae", str(broken_sae), "--cases", "tiny-qwen2/base-sae@chat/filtered", cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    failure = result.stdout.split("tiny-qwen2::base-sae-transfers-to-chat: ", 1)[1]
    assert "does NOT hold" in failure.split("\n")[1]
    kept = read_expectations(EXPECTATIONS / "tiny-qwen2" / "chat-sae@chat.filtered.json").metrics["ce_loss_recovered"]
    assert f"ce_loss_recovered(chat-sae@chat/filtered) = {kept.value:.6g}" in failure


def test_an_sae_whose_output_overflows_is_bad_input_not_a_regression(capsys, tmp_path):
    """Finite weights whose reconstruction overflows float32: exit 2, naming the SAE by its spec."""
    sae = load_sae("zoo:tiny-qwen2/base-sae")
    with torch.no_grad():
        sae.W_enc.mul_(1e25)
        sae.W_dec.mul_(1e25)
    path = saved(sae, tmp_path / "overflowing")
    assert cli(["gate", "--sae", str(path), "--cases", "tiny-qwen2/base-sae@chat and ce"]) == 2
    err = capsys.readouterr().err
    assert f"SAE {path}:" in err and "NaN/Inf" in err and "Traceback" not in err


@pytest.mark.parametrize("parameter", ["W_enc", "b_dec"])
def test_an_sae_with_nan_or_inf_weights_is_refused_before_anything_runs(capsys, tmp_path, parameter):
    sae = load_sae("zoo:tiny-qwen2/base-sae")
    with torch.no_grad():
        getattr(sae, parameter).view(-1)[:3] = float("nan") if parameter == "W_enc" else float("inf")
    path = saved(sae, tmp_path / "bad")
    assert cli(["gate", "--sae", str(path), "--cases", "tiny-qwen2/base-sae@chat and kl"]) == 2
    err = capsys.readouterr().err
    assert "cannot be evaluated" in err and parameter in err


def _retrained(tmp_path, name: str, **changes) -> Path:
    """The base SAE's weights under another config: another hook, width or training model."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = load_sae("zoo:tiny-qwen2/base-sae")
    cfg = sae.cfg.to_dict()
    metadata = dict(cfg.pop("metadata"))
    metadata.update(changes.pop("metadata", {}))
    cfg.update(changes)
    new = StandardSAE(StandardSAEConfig.from_dict(cfg | {"metadata": metadata}))
    if new.cfg.d_sae == sae.cfg.d_sae:
        new.load_state_dict(sae.state_dict())
    return saved(new, tmp_path / name)


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"metadata": {"hook_name": "blocks.0.hook_resid_pre"}}, ["reads blocks.0.hook_resid_pre", "blocks.2"]),
        ({"d_sae": 512}, ["d_sae is 512", "d_sae 1024"]),
        ({"metadata": {"model_name": "zoo:tiny-mistral/base"}}, ["trained on zoo:tiny-mistral/base"]),
    ],
    ids=["hook", "width", "family"],
)
def test_an_sae_that_cannot_stand_in_the_selected_cases_is_refused_with_each_case(capsys, tmp_path, changes, needles):
    path = _retrained(tmp_path, "other", **changes)
    assert cli(["gate", "--sae", str(path), "--cases", "tiny-qwen2/base-sae@chat and kl"]) == 2
    err = capsys.readouterr().err
    assert "cannot replace the SAE of 4 of the 4 selected cases" in err and "tiny-qwen2/base-sae@chat:" in err
    for needle in needles:
        assert needle in err


def test_cases_that_cannot_run_here_never_pass(capsys, tmp_path):
    """A hub case offline skips: a gate that ran nothing is bad input, never ok."""
    path = _retrained(
        tmp_path,
        "qwen-sae",
        d_in=128,
        metadata={"hook_name": "blocks.13.hook_resid_pre", "model_name": "Qwen/Qwen1.5-0.5B"},
    )
    assert cli(["gate", "--sae", str(path), "--cases", "qwen1.5-0.5b/base-sae@chat and not rollout"]) == 2
    err = capsys.readouterr().err
    assert "selected items did not run" in err and "so the gate cannot pass them" in err
