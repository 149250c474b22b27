"""`sae-bench gate` on a zoo pair: an unchanged SAE passes, a broken one fails with a readable table, bad input is 2."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_bench.expectations import read_expectations
from sae_bench.sources import load_sae

EXPECTATIONS = Path(__file__).resolve().parents[1] / "expectations"

CASES = "tiny-qwen2/base-sae@chat and not filtered and not rollout and not user-prompt"


def gate(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sae_bench.cli", "gate", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def broken_sae(tmp_path_factory):
    """The base SAE with its decoder rows shuffled: every feature writes another feature's direction."""
    sae = load_sae("zoo:tiny-qwen2/base-sae")
    with torch.no_grad():
        sae.W_dec.copy_(sae.W_dec[torch.randperm(sae.W_dec.shape[0], generator=torch.Generator().manual_seed(0))])
    path = tmp_path_factory.mktemp("broken-sae")
    sae.save_model(path)
    return path


def test_unchanged_sae_passes_its_gate(tmp_path):
    table = tmp_path / "verdicts.csv"
    result = gate("--sae", "zoo:tiny-qwen2/base-sae", "--cases", CASES, "--table", str(table), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "regression" not in table.read_text()


def test_broken_sae_fails_its_gate_with_a_verdict_table(tmp_path, broken_sae):
    table, junit = tmp_path / "verdicts.md", tmp_path / "gate.xml"
    result = gate(
        "--sae", str(broken_sae), "--cases", CASES, "--table", str(table), "--junit", str(junit), cwd=tmp_path
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    failure = result.stdout.split("FAILURES", 1)[1]
    assert "| metric" in failure and "ce_loss_recovered" in failure and "| regression" in failure
    assert "regression" in table.read_text() and "<testsuite" in junit.read_text()


def test_a_broken_sae_fails_the_claims_it_enters(tmp_path, broken_sae):
    """The gate runs the claims that relate a replaced case; the other side keeps its own SAE and value."""
    result = gate("--sae", str(broken_sae), "--cases", "tiny-qwen2/base-sae@chat/filtered", cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    failure = result.stdout.split("tiny-qwen2::base-sae-transfers-to-chat: ", 1)[1]
    assert "does NOT hold" in failure.split("\n")[1]
    kept = read_expectations(EXPECTATIONS / "tiny-qwen2" / "chat-sae@chat.filtered.json").metrics["ce_loss_recovered"]
    assert f"ce_loss_recovered(chat-sae@chat/filtered) = {kept.value:.6g}" in failure


def test_bad_input_exits_2(tmp_path):
    assert gate("--sae", "zoo:tiny-qwen2/base-saee", "--cases", CASES, cwd=tmp_path).returncode == 2
    assert gate("--sae", "zoo:tiny-qwen2/base-sae", "--cases", "no-such-case", cwd=tmp_path).returncode == 2
    offline = gate(
        "--sae", "zoo:tiny-qwen2/base-sae", "--cases", "qwen1.5-0.5b/base-sae@chat and not rollout", cwd=tmp_path
    )
    assert offline.returncode == 2 and "skipped" in offline.stderr
