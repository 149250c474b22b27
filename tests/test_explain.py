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
