"""The suite's --explain: every transfer case's metrics per token class recorded as never-judged rows with their
definitions and dtype, the feature table of an SAE recorded against its case on its own model, the judged values the
same as a run without it, and the report's views of them."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import matplotlib.image
import pytest

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.engine.definitions import current_version
from sae_bench.engine.token_classes import TOKEN_CLASSES
from sae_bench.errors import BadInput
from sae_bench.execution.executor import RUN_LOCAL_VECTORS
from sae_bench.reports import explanations as report_explanations
from sae_bench.reports.seed_report import build_report
from sae_bench.results_store.database import FEATURES, ResultsDB
from sae_bench.suite import explanations
from sae_bench.suite.runner import Suite, SuiteOptions

ROOT = Path(__file__).resolve().parents[2]
CASES = ("tiny-qwen2/base-sae@chat", "tiny-qwen2/base-sae@base", "tiny-qwen2/chat-sae@chat")
SHIPPED = load_registry(SHIPPED_CASES)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Run 1 of CASES without --explain, run 2 with it, in one database."""
    path = tmp_path_factory.mktemp("explain") / "results.sqlite"
    selection = [arg for case in CASES for arg in ("--case-id", case)]
    for extra in ([], ["--explain"]):
        args = [str(ROOT / "benchmarks" / "test_cases.py"), "-p", "no:cacheprovider", "-q", "--benchmark-disable"]
        assert pytest.main([*args, *selection, "--results", str(path), *extra]) == 0
    return path


def test_each_class_of_each_transfer_case_is_recorded_never_judged(recorded):
    rows = ResultsDB(recorded).measurements(2)
    classes = rows[rows.grp == explanations.GROUP]
    assert set(classes.case_id) == set(CASES) and (classes.groupby("case_id").size() == 7 * len(TOKEN_CLASSES)).all()
    assert set(classes.verdict) == {"unchecked"} and set(classes.dtype) == {"float32"}
    assert all(v == current_version(m) for m, v in zip(classes.metric, classes.definition, strict=True))
    for case in CASES:
        values = rows[rows.case_id == case].set_index("metric").value
        predictions = [values[f"predictions_by_class[{c}]"] for c in TOKEN_CLASSES]
        added = math.fsum(
            values[f"ce_delta_by_class[{c}]"] * n for c, n in zip(TOKEN_CLASSES, predictions, strict=True) if n
        )
        assert added / sum(predictions) == pytest.approx(values["ce_delta"], rel=1e-6)
        undefined = classes[(classes.case_id == case) & classes.value.isna()]
        assert undefined.undefined_reason.notna().all()  # an empty class says so (outliers: none here)


def test_the_judged_values_are_those_of_a_run_without_explain(recorded):
    db = ResultsDB(recorded)
    plain, explained = db.measurements(1), db.measurements(2)
    assert explanations.GROUP not in set(plain.grp) and db.explanations(1, FEATURES) == []
    judged = explained[explained.grp != explanations.GROUP]
    columns = ["case_id", "grp", "metric", "value", "verdict"]
    assert judged[columns].reset_index(drop=True).equals(plain[columns].reset_index(drop=True))


def test_a_feature_table_is_recorded_against_the_saes_own_case(recorded):
    db = ResultsDB(recorded)
    (found,) = db.explanations(2, FEATURES)  # chat-sae@chat and base-sae@base are their SAEs' own cases
    assert (found.case_id, found.against, found.dtype) == (
        "tiny-qwen2/base-sae@chat",
        "tiny-qwen2/base-sae@base",
        "float32",
    )
    assert found.definitions == {"latent_scaling_beta": 1, "latent_scaling_ratio": 1}
    counts, scaling = found.body["counts"], found.body["scaling"]
    assert 0 < scaling["supported"] <= 1024 and 0 < scaling["median_nu"] < 10
    assert counts["born"] + counts["died"] + counts["dead_on_both"] <= counts["features"] == 1024
    for by in ("density", "scaling"):
        table = found.body["tables"][by]
        assert len(table) == explanations.TOP_FEATURES
        assert all("⟦" in row["fires_most_on_other"] or row["density_other"] == 0 for row in table)
    vectors = db.vectors(2, "tiny-qwen2/base-sae@chat")
    assert {"feature_density", "latent_scaling_beta", "feature_fired"} <= set(vectors)
    assert not set(vectors) & RUN_LOCAL_VECTORS  # positions into this run's rows are never recorded


def test_the_report_shows_where_the_loss_goes_and_links_a_capped_feature_page(recorded, tmp_path):
    page = build_report(ResultsDB(recorded), tmp_path / "report", run=2)
    folder = page.parent
    assert matplotlib.image.imread(folder / "tiny-qwen2-token-classes.png").ndim == 3
    name = report_explanations.page_name("tiny-qwen2/base-sae@chat")
    assert f"href='{name}'" in page.read_text() and f"]({name})" in (folder / "report.md").read_text()
    text = (folder / name).read_text()
    assert len(text.encode()) <= report_explanations.PAGE_BYTES and "tiny-qwen2/base-sae@base" in text
    plain = build_report(ResultsDB(recorded), tmp_path / "plain", run=1).parent
    assert not (plain / "tiny-qwen2-token-classes.png").exists() and not list(plain.glob("features-*.html"))


# -- which case is the SAE's own ------------------------------------------------------------------------------------


def test_the_own_case_is_the_same_sae_and_rows_on_the_model_it_was_trained_on():
    case = SHIPPED.get("tiny-qwen2/base-sae@chat")
    own = explanations.own_case(case, list(SHIPPED), "zoo:tiny-qwen2/base")
    assert own.id == "tiny-qwen2/base-sae@base"
    assert explanations.own_case(own, list(SHIPPED), "zoo:tiny-qwen2/base") is None  # it is its own case
    filtered = explanations.own_case(
        SHIPPED.get("tiny-qwen2/base-sae@chat/filtered"), list(SHIPPED), "zoo:tiny-qwen2/base"
    )
    assert filtered.id == "tiny-qwen2/base-sae@base/filtered"  # the same variant, so the same outlier rule
    other_rows = [replace(own, tokens=own.tokens * 2)]
    assert explanations.own_case(case, other_rows, "zoo:tiny-qwen2/base") is None
    assert explanations.own_case(case, list(SHIPPED), "") is None  # an SAE that names no model has no own case


def test_a_hub_model_is_found_by_the_last_part_of_its_name():
    case = SHIPPED.get("tiny-qwen2/base-sae@chat")
    hub = replace(case, model="hf:google/gemma-2-2b")
    assert explanations.trained_on("gemma-2-2b", hub) and explanations.trained_on("Google/Gemma-2-2B", hub)
    assert not explanations.trained_on("gemma-2-2b-it", hub) and not explanations.trained_on("gemma-2", hub)


def test_explain_on_a_ray_cluster_is_refused_with_why():
    pytest.importorskip("ray")
    with pytest.raises(BadInput, match="--explain runs here"):
        Suite(SuiteOptions(explain=True, ray="local"))


def test_only_cases_with_a_partner_on_another_model_stream_their_features():
    family = [case for case in SHIPPED if case.family == "tiny-gemma"]
    streamed = explanations.paired_with_another_model(family)
    assert {"tiny-gemma/base-sae@it", "tiny-gemma/base-sae@base", "tiny-gemma/it-sae@base/filtered"} <= streamed
    assert "tiny-gemma/base-sae@it/rollout" not in streamed  # rollouts run on the it model only
    assert not any(SHIPPED.get(cid).paired for cid in streamed)
    assert explanations.paired_with_another_model([SHIPPED.get("tiny-gemma/base-sae@it")]) == set()
