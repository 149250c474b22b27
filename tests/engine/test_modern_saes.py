"""The zoo's TopK and JumpReLU SAEs: they load as SAELens's own classes, the engine's metrics on them agree with
`sae_lens.evals` on the same tokens (as the ReLU SAEs' do), and the operating point the zoo promises holds."""

import pytest
from sae_lens import JumpReLUSAE, TopKSAE
from sae_lens.evals import get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler

from sae_bench.engine.evaluate import EvalConfig, evaluate_transfer
from sae_bench.sources.loading import load_model, load_sae, load_zoo_data
from sae_bench.sources.zoo.recipes import FAMILIES, HOOK
from tests.saelens_reference import saelens_sparsity_and_variance

MODERN = {sae.name: sae for sae in FAMILIES["tiny-mistral"].saes if sae.spec.architecture != "standard"}
CLASSES = {"topk": TopKSAE, "jumprelu": JumpReLUSAE}


@pytest.fixture(scope="module")
def heldout():
    return load_zoo_data("heldout")["input_ids"]


@pytest.fixture(scope="module")
def models():
    return {name: load_model(f"zoo:tiny-mistral/{name}") for name in ("base", "instruct")}


def test_the_zoo_ships_topk_and_jumprelu_saes_and_a_topk_sweep():
    assert {"base-topk", "instruct-topk", "base-jumprelu", "base-topk-k8", "base-topk-k16"} <= set(MODERN)
    assert sorted(MODERN[n].spec.k for n in ("base-topk-k8", "base-topk-k16", "base-topk")) == [8, 16, 32]


@pytest.mark.parametrize("name", sorted(MODERN))
def test_a_modern_zoo_sae_loads_as_saelens_own_class(name):
    sae = load_sae(f"zoo:tiny-mistral/{name}")
    recipe = MODERN[name]
    assert isinstance(sae, CLASSES[recipe.spec.architecture]) and sae.cfg.metadata.hook_name == recipe.spec.hook
    assert recipe.spec.hook == HOOK or recipe.release  # a release's SAEs read every layer
    if MODERN[name].spec.architecture == "topk":
        assert sae.cfg.k == MODERN[name].spec.k


@pytest.mark.parametrize("name", ["base-topk", "base-jumprelu"])
def test_engine_agrees_with_saelens_evals_on_a_modern_sae(name, models, heldout):
    model, sae, tokens = models["base"], load_sae(f"zoo:tiny-mistral/{name}"), heldout[:16]
    ours = evaluate_transfer(model, sae, tokens, EvalConfig(hook=HOOK, batch_size=16))
    recons = get_recons_loss(sae, model, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=True)
    assert ours.ce_clean == pytest.approx(recons["ce_loss_without_sae"].mean().item(), abs=1e-5)
    assert ours.ce_spliced == pytest.approx(recons["ce_loss_with_sae"].mean().item(), abs=1e-5)
    assert ours.ce_zero_ablation == pytest.approx(recons["ce_loss_with_ablation"].mean().item(), abs=1e-5)
    theirs, _ = saelens_sparsity_and_variance(model, sae, tokens)
    assert ours.l0 == pytest.approx(theirs["l0"], abs=1e-5)
    assert ours.explained_variance == pytest.approx(theirs["explained_variance"], abs=1e-5)


@pytest.mark.parametrize("name", ["base-topk", "base-jumprelu"])
def test_modern_saes_recover_nine_tenths_of_ce_at_l0_40_or_less(name, models, heldout):
    """The operating point: on 128 held-out rows of their own model, CE recovered ≥ 0.90 at L0 ≤ 40."""
    report = evaluate_transfer(
        models["base"], load_sae(f"zoo:tiny-mistral/{name}"), heldout[:128], EvalConfig(hook=HOOK)
    )
    assert report.ce_loss_recovered >= 0.90 and report.l0 <= 40, (report.ce_loss_recovered, report.l0)


@pytest.mark.parametrize("name", ["base-topk-k8", "base-topk-k16", "base-topk"])
def test_a_topk_sae_never_fires_more_than_k_features(name, models, heldout):
    report = evaluate_transfer(
        models["base"], load_sae(f"zoo:tiny-mistral/{name}"), heldout[:16], EvalConfig(hook=HOOK)
    )
    assert report.l0 <= MODERN[name].spec.k
