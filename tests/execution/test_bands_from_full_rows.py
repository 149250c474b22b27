"""Kutsyk's Gemma universality conventions: the density bands (regular, dead in one model only) and the dead
fractions from every position of the full rows, BOS included (4_sae_eval's densities), the similarities and dead
activation errors from the rows without their first token (5_features_transfer's exclude_bos)."""

from dataclasses import replace

import pytest
import torch

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.engine.universality import PairedConfig, evaluate_universality
from sae_bench.errors import CaseFileError
from sae_bench.execution.executor import CaseExecutor

ZOO_CASE = "tiny-mistral/base-sae@base-vs-instruct"


def test_the_gemma_case_takes_its_bands_from_the_full_rows():
    case = load_registry(SHIPPED_CASES).get("gemma-2b/res-jb-l6@base-vs-python-codes/without-bos")
    assert case.drop_first_token and case.bands_from_full_rows


def test_bands_come_from_the_full_rows_and_similarities_from_the_cut_rows():
    case = replace(load_registry(SHIPPED_CASES).get(ZOO_CASE), tokens=4096, drop_first_token=True)
    cut = CaseExecutor()
    cut.plan([case])
    cut_values, (_, cut_vectors) = cut.measure(case), cut.details(case)
    kutsyk = replace(case, bands_from_full_rows=True)
    executor = CaseExecutor()
    executor.plan([kutsyk])
    values, (_, vectors) = executor.measure(kutsyk), executor.details(kutsyk)
    cost = executor.cost.table().set_index("model")
    assert cost.loc["total", "fpe_run"] == cost.loc["total", "fpe_floor"]  # the bands' token set has its floor

    full_rows = executor.tokens(kutsyk).full_rows
    assert full_rows.shape[1] == kutsyk.context and torch.equal(full_rows[:, 1:], executor.tokens(kutsyk).tokens)
    config = PairedConfig(hook=case.hook, batch_size=case.batch_size, progress=False)
    models = executor.model(case.base_model_key), executor.model(case.model_key)
    on_full_rows = evaluate_universality(*models, executor.sae(case.sae), full_rows, config)
    assert torch.equal(vectors["density_base"], on_full_rows.density_base)
    assert torch.equal(vectors["density_finetuned"], on_full_rows.density_finetuned)
    assert torch.equal(vectors["regular"], on_full_rows.regular.double())
    assert values["dead_fraction_base"] == on_full_rows.summary()["dead_fraction_base"]
    # the per-feature similarities are the cut rows' own, averaged over the full rows' bands
    torch.testing.assert_close(
        vectors["activation_similarity"], cut_vectors["activation_similarity"], rtol=0, atol=0, equal_nan=True
    )
    assert not torch.equal(vectors["density_base"], cut_vectors["density_base"])  # BOS changes the densities
    regular = on_full_rows.regular
    expected = vectors["activation_similarity"][regular]
    assert values["activation_similarity_regular_mean"] == pytest.approx(float(expected[~expected.isnan()].mean()))
    assert values["activation_similarity_regular_mean"] != cut_values["activation_similarity_regular_mean"]


def test_bands_from_full_rows_without_drop_first_token_is_refused(tmp_path):
    path = tmp_path / "tiny-mistral.toml"
    path.write_text(
        'family = "mine"\n[saes]\ns = "zoo:tiny-mistral/base-sae"\n[models]\nbase = "zoo:tiny-mistral/base"\n'
        'it = "zoo:tiny-mistral/instruct"\n[[case]]\nsae = "s"\nmodel = "it"\nbase = "base"\n'
        'hook = "blocks.2.hook_resid_pre"\ndataset = "zoo:heldout"\ntokens = 1024\ncontext = 128\n'
        'groups = ["universality"]\nbands_from_full_rows = true\n'
    )
    with pytest.raises(CaseFileError, match="bands_from_full_rows.*set drop_first_token = true"):
        load_registry(tmp_path)
