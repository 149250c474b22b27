"""Token classes: each position's class by the stated order, the per-class sums against a plain loop on synthetic
data, and, in the engine, classes that add up to the whole report and reconstruction metrics equal to an evaluation
restricted to the class's positions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_bench.engine.evaluate import EvalConfig, evaluate_transfer
from sae_bench.engine.token_classes import TOKEN_CLASSES, TokenClassifier, TokenClassStats
from tests.conftest import D_MODEL, standard_sae, tiny_model

HOOK = "blocks.2.hook_resid_pre"


def test_each_position_takes_the_first_class_that_applies():
    classifier = TokenClassifier(bos_id=1, special_ids=torch.tensor([2]), newline_ids=torch.tensor([3, 2]))
    tokens = torch.tensor([[1, 2, 3, 4, 1, 3], [5, 5, 2, 3, 4, 4]])
    outlier = torch.zeros_like(tokens, dtype=torch.bool)
    outlier[0, 3] = outlier[1, 0] = True
    names = [[TOKEN_CLASSES[i] for i in row] for row in classifier.classes(tokens, outlier).tolist()]
    assert names == [
        ["first", "special", "newline", "outlier", "first", "newline"],
        ["outlier", "content", "special", "newline", "content", "content"],
    ]


def test_a_chat_rows_roles_come_after_the_token_rules():
    classifier = TokenClassifier(bos_id=1, special_ids=torch.tensor([2]), newline_ids=torch.tensor([3]))
    tokens = torch.tensor([[1, 2, 5, 3, 5, 2, 5, 5, 2]])
    roles = torch.tensor([[0, 0, 1, 1, 1, 0, 2, 2, 2]], dtype=torch.int8)
    names = [TOKEN_CLASSES[i] for i in classifier.classes(tokens, torch.zeros_like(tokens, dtype=torch.bool), roles)[0]]
    assert names == ["first", "special", "user", "newline", "user", "special", "assistant", "assistant", "special"]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), m=st.integers(1, 60), seed=st.integers(0, 10_000))
def test_class_sums_match_a_plain_loop(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    d = 6
    classes = torch.randint(0, len(TOKEN_CLASSES), (n,), generator=g)
    x, x_hat = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    acts = torch.relu(torch.randn(n, 9, generator=g))
    score_classes = torch.randint(0, len(TOKEN_CLASSES), (m,), generator=g)
    clean, spliced, kl = torch.rand(m, generator=g) * 5, torch.rand(m, generator=g) * 5, torch.rand(m, generator=g)
    stats = TokenClassStats()
    stats.add_reconstruction(classes[: n // 2], x[: n // 2], x_hat[: n // 2], acts[: n // 2])  # two batches
    stats.add_reconstruction(classes[n // 2 :], x[n // 2 :], x_hat[n // 2 :], acts[n // 2 :])
    stats.add_scores(score_classes, clean, spliced, kl)
    table = stats.compute()
    for index, name in enumerate(TOKEN_CLASSES):
        rows = [i for i in range(n) if classes[i] == index]
        preds = [j for j in range(m) if score_classes[j] == index]
        got = table[name]
        assert got["tokens"] == len(rows) and got["predictions"] == len(preds)
        if rows:
            xs = x[rows].double()
            errors = [float(((x[i].double() - x_hat[i].double()) ** 2).sum()) for i in rows]
            mean = xs.mean(0)
            variance = sum(float(((x[i].double() - mean) ** 2).sum()) for i in rows)
            assert got["l0"] == pytest.approx(sum(int((acts[i] > 0).sum()) for i in rows) / len(rows))
            assert got["mse"] == pytest.approx(sum(errors) / len(rows))
            if variance > 1e-9:
                assert got["explained_variance"] == pytest.approx(1 - sum(errors) / variance, rel=1e-6, abs=1e-9)
        else:
            assert got["l0"] is got["mse"] is got["explained_variance"] is None
        if preds:
            delta = sum(float(spliced[j]) - float(clean[j]) for j in preds) / len(preds)
            assert got["ce_delta"] == pytest.approx(delta, abs=1e-9)
            assert got["kl_spliced"] == pytest.approx(sum(float(kl[j]) for j in preds) / len(preds))


@pytest.fixture(scope="module")
def evaluated(tokens):
    model, sae = tiny_model(), standard_sae(D_MODEL, 48, seed=3)
    config = EvalConfig(hook=HOOK, batch_size=4, progress=False, token_classes=True, special_token_ids=(49, 59))
    return model, sae, evaluate_transfer(model, sae, tokens, config)


def test_the_classes_add_up_to_the_whole_report(evaluated):
    _, _, report = evaluated
    table = report.token_classes
    assert table["special"]["tokens"] > 0 and table["first"]["tokens"] > 0 and table["content"]["tokens"] > 0
    assert sum(c["tokens"] for c in table.values()) == report.n_tokens_reconstructed
    assert sum(c["predictions"] for c in table.values()) == report.n_predictions

    def weighted(metric: str, count: str) -> float:
        rows = [c for c in table.values() if c[count]]
        return math.fsum(c[metric] * c[count] for c in rows) / sum(c[count] for c in rows)

    assert weighted("l0", "tokens") == pytest.approx(report.l0, rel=1e-9)
    assert weighted("mse", "tokens") == pytest.approx(report.mse, rel=1e-9)
    assert weighted("ce_delta", "predictions") == pytest.approx(report.ce_delta, rel=1e-6, abs=1e-9)
    assert weighted("kl_spliced", "predictions") == pytest.approx(report.kl_spliced, rel=1e-6, abs=1e-9)


def test_a_class_reconstructs_as_an_evaluation_of_its_positions_alone(evaluated, tokens):
    model, sae, report = evaluated
    classifier = TokenClassifier(None, torch.tensor([49, 59]))
    mask = classifier.classes(tokens, torch.zeros_like(tokens, dtype=torch.bool)) == TOKEN_CLASSES.index("content")
    alone = evaluate_transfer(
        model, sae, tokens, EvalConfig(hook=HOOK, batch_size=4, progress=False), position_mask=mask
    )
    content = report.token_classes["content"]
    assert content["tokens"] == alone.n_tokens_reconstructed
    assert content["l0"] == pytest.approx(alone.l0) and content["mse"] == pytest.approx(alone.mse, rel=1e-6)
    assert content["explained_variance"] == pytest.approx(alone.explained_variance, rel=1e-6)


def test_without_the_option_the_report_has_no_classes_and_the_same_numbers(evaluated, tokens):
    model, sae, report = evaluated
    plain = evaluate_transfer(
        model, sae, tokens, EvalConfig(hook=HOOK, batch_size=4, progress=False, special_token_ids=(49, 59))
    )
    assert plain.token_classes is None
    assert plain.to_row() == {**report.to_row()}
