"""`sae-bench explain`: a transfer case's metrics per token class, beside another case, and its bad input."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from sae_bench.cli import main
from sae_bench.engine.token_classes import TOKEN_CLASSES


def test_explain_prints_each_class_of_a_case_and_of_the_case_beside_it(capsys):
    args = ["explain", "tiny-qwen2/base-sae@chat", "--against", "tiny-qwen2/chat-sae@chat", "--format", "csv"]
    assert main(args) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table["class"]) == list(TOKEN_CLASSES) * 2
    assert set(table.case) == {"tiny-qwen2/base-sae@chat", "tiny-qwen2/chat-sae@chat"}
    for _, rows in table.groupby("case"):
        assert rows.share_of_ce_delta.sum() == pytest.approx(1.0)
        assert rows.tokens.sum() == 16384  # every reconstructed position of the case's rows, in one class each


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tiny-qwen2/base-sae@base-vs-chat", "paired case: token classes explain a transfer case"),
        ("tiny-qwen2/no-such@chat", "no case 'tiny-qwen2/no-such@chat'"),
        ("mistral-7b/base-sae@base", "mistral-7b/base-sae@base needs"),
    ],
)
def test_explain_refuses_what_it_cannot_explain_in_one_line(capsys, case, message):
    assert main(["explain", case]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_explain_own_lists_the_features_that_break_from_the_saes_own_model(capsys):
    args = ["explain", "tiny-qwen2/base-sae@chat", "--own", "tiny-qwen2/base-sae@base", "--top", "3", "--format", "csv"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "features of zoo:tiny-qwen2/base-sae from tiny-qwen2/base-sae@base to tiny-qwen2/base-sae@chat" in out
    top = pd.read_csv(io.StringIO(out.split("(shifted: 10x or more)\n", 1)[1]))
    assert len(top) == 3 and list(top.columns) == ["feature", "density_own", "density_other", "log10_ratio"]
    assert top.log10_ratio.abs().is_monotonic_decreasing


def test_explain_own_must_be_the_same_sae(capsys):
    assert main(["explain", "tiny-qwen2/base-sae@chat", "--own", "tiny-qwen2/chat-sae@chat"]) == 2
    assert "must be the same SAE" in capsys.readouterr().err
