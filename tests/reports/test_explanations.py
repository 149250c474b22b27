"""The report's explanation views on synthetic records: class contributions add up to the case's ΔCE, and a feature
page stays under its size cap however long its windows."""

from __future__ import annotations

import pandas as pd
import pytest

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.engine.definitions import class_metric
from sae_bench.engine.token_classes import TOKEN_CLASSES
from sae_bench.reports import explanations
from sae_bench.results_store.database import FEATURES, Explanation

CASE = load_registry(SHIPPED_CASES).get("tiny-qwen2/base-sae@chat")


def test_each_class_contributes_its_share_of_the_cases_loss():
    deltas = {"outlier": None, "first": -2.0, "special": 0.5, "newline": 1.0, "user": None, "assistant": None}
    deltas["content"] = 3.0
    predictions = {"outlier": 0, "first": 4, "special": 2, "newline": 10, "user": 0, "assistant": 0, "content": 84}
    rows = [(class_metric("ce_delta", c), deltas[c]) for c in TOKEN_CLASSES]
    rows += [(class_metric("predictions", c), predictions[c]) for c in TOKEN_CLASSES]
    frame = pd.DataFrame([{"case_id": CASE.id, "metric": m, "value": v} for m, v in rows])
    table = explanations.class_contributions(frame, [CASE]).set_index("class")
    assert table.contribution.to_dict() == pytest.approx(
        {
            "outlier": 0.0,
            "first": -0.08,
            "special": 0.01,
            "newline": 0.1,
            "user": 0.0,
            "assistant": 0.0,
            "content": 2.52,
        }
    )
    assert table.contribution.sum() == pytest.approx(sum(deltas[c] * n for c, n in predictions.items() if n) / 100)
    assert pd.isna(table.per_prediction["outlier"]) and table.per_prediction["first"] == -2.0
    assert set(table.panel) == {"chat"} and set(table.SAE) == {"base-sae"}
    assert explanations.class_contributions(frame.iloc[:0], [CASE]) is None


def _explanation(window: str, rows: int) -> Explanation:
    record = {"feature": 1, "density_own": 0.1, "density_other": 0.0, "log10_density_ratio": -9.0, "beta_own": 1.0,
              "beta_other": float("nan"), "nu": float("nan"), "fires_most_on_own": "\n".join([window] * 3),
              "fires_most_on_other": "(never fires)"}  # fmt: skip
    body = {"counts": {"features": 8, "born": 1, "died": 2, "shifted": 3, "dead_on_both": 0},
            "tables": {"density": [record] * rows, "scaling": [record] * rows}}  # fmt: skip
    return Explanation(CASE.id, FEATURES, "tiny-qwen2/base-sae@base", "float32", {"latent_scaling_beta": 1}, body)


def test_a_feature_page_shows_every_window_escaped_when_it_fits():
    page = explanations.feature_page(_explanation("1.5: <b>x</b>⟦y⟧", 20), run=3)
    assert page.count("&lt;b&gt;x&lt;/b&gt;⟦y⟧") == 2 * 20 * 3 and "<b>x</b>" not in page and "Capped" not in page
    assert "born 1, died 2, shifted 3" in page and "latent_scaling_beta v1" in page and "Run 3" in page


def test_a_feature_page_too_large_keeps_one_window_then_fewer_rows():
    long = "9.9: " + "w" * 8000  # 40 rows of one window each: 320 kB; 20 rows: 160 kB
    page = explanations.feature_page(_explanation(long, 20), run=1)
    assert len(page.encode()) <= explanations.PAGE_BYTES and "Capped at 200 kB" in page
    assert page.count(long) == 2 * 10 and "the first 10 features per ranking" in page


def test_the_token_class_figure_wraps_its_panels_and_names_its_axes():
    from sae_bench.reports import figures

    rows = [{"panel": f"m{p}", "SAE": s, "class": c, "contribution": 0.1, "per_prediction": -0.2}
            for p in range(5) for s in ("own", "other") for c in TOKEN_CLASSES]  # fmt: skip
    figure = figures.token_classes(pd.DataFrame(rows), "fam", 7)
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert len(figure.axes) == 2 * 2 * 4 and len(visible) == 2 * 5  # two rows a panel, four panels a row
    assert "run 7" in figure._suptitle.get_text() and visible[0].get_ylabel().startswith("ΔCE contribution")
    assert [t.get_text() for t in visible[-1].get_xticklabels()] == list(TOKEN_CLASSES)
