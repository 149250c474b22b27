"""`sae-bench explain`: a transfer case's metrics per token class, beside another case, and its bad input."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest

from sae_bench.cli import main
from sae_bench.engine.feature_breaks import FEATURE_COLUMNS
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
    assert "features of zoo:tiny-qwen2/base-sae from tiny-qwen2/base-sae@base (own) to tiny-qwen2/base-sae@chat" in out
    _, by_density, by_scaling = re.split(r"\nthe 3 features that moved most by [^\n]*\n", out)
    density, scaling = pd.read_csv(io.StringIO(by_density)), pd.read_csv(io.StringIO(by_scaling))
    assert len(density) == len(scaling) == 3 and list(density.columns) == list(FEATURE_COLUMNS)
    assert density.log10_density_ratio.abs().is_monotonic_decreasing
    assert np.log10(scaling.nu.abs()).abs().is_monotonic_decreasing
    assert scaling.nu.tolist() == pytest.approx((scaling.beta_other / scaling.beta_own).tolist())
    fired = scaling.fires_most_on_own.tolist() + scaling.fires_most_on_other.tolist()
    assert all(re.fullmatch(r"[0-9.e+-]+: .*⟦.+⟧.*", text, re.S) for text in fired), fired


def test_explain_own_must_be_the_same_sae(capsys):
    assert main(["explain", "tiny-qwen2/base-sae@chat", "--own", "tiny-qwen2/chat-sae@chat"]) == 2
    assert "must be the same SAE" in capsys.readouterr().err


def test_a_chat_case_splits_its_rows_by_role(capsys):
    """A rollout case reads the reply (assistant) and the template tokens before it; a user-prompt case the user's
    text; neither reads the other's role."""
    for case, role, other in (("rollout", "assistant", "user"), ("user-prompt", "user", "assistant")):
        assert main(["explain", f"tiny-gemma/base-sae@it/{case}", "--format", "csv"]) == 0
        table = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("class")
        assert table.tokens[role] > 0.5 * table.tokens.sum() and table.tokens[other] == 0
