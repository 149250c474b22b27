"""Each metric's definition is pinned: its value on one fixed synthetic input is stored beside its version
(`sae_bench.engine.definitions`), so a formula that changes without a new version fails here."""

import math

import pytest
import torch

from sae_bench.cases.registry import METRIC_GROUPS
from sae_bench.engine.definitions import BY_CLASS, DEFINITIONS, UnknownDefinition, class_metric, definition
from sae_bench.engine.drift import weight_drift
from sae_bench.engine.evaluate import EvalConfig, evaluate_transfer
from sae_bench.engine.feature_stats import MIN_FIRINGS, FeatureShift
from sae_bench.engine.outliers import OutlierPolicy
from sae_bench.engine.transfer_report import TransferReport
from sae_bench.engine.universality import PairedConfig, evaluate_universality
from sae_bench.sources.loading import load_model
from tests.conftest import D_MODEL, sample_tokens, standard_sae, tiny_model
from tests.engine.hf_pair import hf_pair

PIN_TOLERANCE = {"rel": 1e-6, "abs": 1e-9}
"""Float32 forward passes on this input agree across BLAS builds to about 1e-7 relative; a changed formula moves a
metric far more than that (the pins differ from each other's neighbouring definitions by > 1 %)."""


def nudged() -> torch.nn.Module:
    """The pinned "fine-tune": the pinned model with every weight moved by 5 % of its spread, seed 7."""
    model = tiny_model(seed=0)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
    return model


def pinned_sae(model, tokens, hook: str) -> torch.nn.Module:
    """A 64-feature SAE that behaves like a trained one on the pinned tokens: 32 features a noisy identity (ReLU of
    ±x, decoded with 10 % noise), 24 sparse random directions firing on about 5 % of the base model's tokens, and 8
    set just above every base token's projection (dead in the base model, perhaps alive in the fine-tune)."""
    sae = standard_sae(D_MODEL, 64, seed=2)
    gen = torch.Generator().manual_seed(3)
    directions = torch.nn.functional.normalize(torch.randn(D_MODEL, 32, generator=gen), dim=0)
    x = model.run_with_cache(tokens, names_filter=hook)[1][hook].reshape(-1, D_MODEL)
    projections = x @ directions
    eye = torch.eye(D_MODEL)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye, directions], dim=1))
        sparse = -projections[:, :24].quantile(0.95, dim=0)
        sae.b_enc.copy_(torch.cat([torch.zeros(32), sparse, -projections[:, 24:].max(dim=0).values - 1e-3]))
        decoder = torch.cat([eye, -eye, 0.1 * directions.T])
        sae.W_dec.copy_(decoder + 0.1 * torch.randn(decoder.shape, generator=gen) / D_MODEL**0.5)
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def pinned_values(tmp_path_factory) -> dict[str, float | None]:
    """Every defined metric on the pinned input: the conftest's tiny model (seed 0), 6 rows of 16 tokens it samples
    (seed 1), `pinned_sae` at blocks.1.hook_resid_post spliced into `nudged()`, batches of 2, outliers above norm
    5.2 (about a fifth of the positions) kept un-spliced; the paired metrics of the same SAE on the model against
    `nudged()`; weight drift of the HF pair of `hf_pair`."""
    model, finetuned = tiny_model(seed=0), nudged()
    tokens = sample_tokens(model, n_sequences=6, length=16, seed=1)
    hook = "blocks.1.hook_resid_post"
    sae = pinned_sae(model, tokens, hook)
    config = EvalConfig(
        hook=hook,
        batch_size=2,
        outliers=OutlierPolicy(5.2, norm="raw"),
        pooled_per_token_ev=True,
        progress=False,
        token_classes=True,
        feature_stats=True,
    )
    report = evaluate_transfer(finetuned, sae, tokens, config)
    values: dict[str, float | None] = dict(report.to_row())
    values.update({f"{metric}{BY_CLASS}": value for metric, value in report.token_classes["content"].items()})
    own = evaluate_transfer(model, sae, tokens, config).features
    values["latent_scaling_beta"] = float(report.features.beta.nanmean())
    supported = (own.fired >= MIN_FIRINGS) & (report.features.fired >= MIN_FIRINGS)
    values["latent_scaling_ratio"] = float(FeatureShift(own, report.features).ratio[supported].mean())
    paired = evaluate_universality(model, finetuned, sae, tokens, PairedConfig(hook=hook, batch_size=2, progress=False))
    values.update(paired.summary())
    base_dir, finetuned_dir = hf_pair(tmp_path_factory.mktemp("hf_pair"))
    values["weight_drift"] = weight_drift(load_model(str(base_dir)), load_model(str(finetuned_dir))).overall
    return values


@pytest.mark.parametrize("name", list(DEFINITIONS))
def test_each_definition_gives_its_pinned_value(pinned_values, name):
    pin, got = DEFINITIONS[name].pin, pinned_values[name]
    if pin is None or got is None:
        assert got is pin, f"{name} v{DEFINITIONS[name].version}: pinned {pin}, got {got}"
        return
    assert math.isfinite(got)
    assert got == pytest.approx(pin, **PIN_TOLERANCE), (
        f"{name} gives {got!r} on the pinned input where its version {DEFINITIONS[name].version} gives {pin!r}: "
        "a changed formula needs a new version (and the old one in `earlier`), and then a new pin"
    )


def test_every_reported_metric_has_a_definition():
    reported = {name for names in METRIC_GROUPS.values() for name in names} | set(TransferReport.metric_docs())
    assert reported <= set(DEFINITIONS)
    for entry in DEFINITIONS.values():
        assert entry.version >= 1 and entry.formula and "\n" not in entry.formula
        assert set(entry.earlier) == set(range(1, entry.version)), f"{entry.name}: every former version is described"


def test_the_pinned_input_exercises_each_metric(pinned_values):
    """A pin on a degenerate input (every share 0, nothing dead) would let a formula change pass unseen."""
    assert 0 < pinned_values["outlier_fraction"] < 0.5
    assert 0 < pinned_values["outlier_share_early_position"] < 1 and 0 < pinned_values["outlier_share_other"] < 1
    assert 0 < pinned_values["ce_loss_recovered"] < 1 and 0 < pinned_values["kl_score"] < 1
    assert 0 < pinned_values["explained_variance"] < 1 and 0 < pinned_values["dead_fraction_base"] < 1
    assert pinned_values["explained_variance"] != pinned_values["explained_variance_flattened"]
    assert 0 < pinned_values["weight_drift"]
    for name in DEFINITIONS:
        if not name.startswith(("dead_activation_error_dead_in_finetuned", "outlier_share_bos", "outlier_share_new")):
            assert pinned_values[name] is not None, name


def test_a_class_value_has_its_metrics_definition():
    assert definition(class_metric("ce_delta", "first")) is DEFINITIONS["ce_delta_by_class"]
    for wrong in ("ce_delta[first]", "ce_delta_by_class[First]", "ce_delta_by_class[first", "nope_by_class[first]"):
        with pytest.raises(UnknownDefinition):
            definition(wrong)


def test_an_unknown_metric_names_the_fix():
    with pytest.raises(UnknownDefinition, match="sae-bench metrics"):
        definition("explained_varaince")
