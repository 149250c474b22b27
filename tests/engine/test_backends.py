"""The two model backends (`sae_bench.engine.backends`) give the engine equal numbers: a transfer pass, a pass across
hooks, a paired universality pass and chat rollouts on zoo models, each on HookedTransformer and on TransformerBridge;
the bridge's forward passes are counted at the floor; a wrong backend is one message; the bridge is the default, and a
HookedTransformer built by accident fails the tests."""

from __future__ import annotations

import pytest
import torch

from sae_bench.engine.evaluate import EvalConfig, evaluate_shared, evaluate_transfer
from sae_bench.engine.metrics import FLOAT32_ROUNDING
from sae_bench.engine.universality import PairedConfig, evaluate_universality
from sae_bench.errors import BadInput
from sae_bench.expectations.rules import FLOAT_FLOOR_REL
from sae_bench.sources.loading import BACKENDS, load_model, load_sae, load_zoo_data

HOOK = "blocks.2.hook_resid_pre"


@pytest.fixture(scope="module")
def models():
    return {
        backend: {name: load_model(f"zoo:tiny-mistral/{name}", backend=backend) for name in ("base", "instruct")}
        for backend in BACKENDS
    }


@pytest.fixture(scope="module")
def tokens():
    return load_zoo_data("heldout")["input_ids"][:24]


def _close(got: dict, expected: dict) -> None:
    """Equal to float32 rounding: the two backends' forward passes order their float32 sums differently (folded
    norms, a centred unembedding), which moves a metric by a few float32 epsilons, relative."""
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if value is None or isinstance(value, str):
            assert got[name] == value, name
        else:
            assert got[name] == pytest.approx(value, rel=FLOAT_FLOOR_REL, abs=FLOAT32_ROUNDING), name


def test_a_transfer_pass_gives_equal_numbers_on_both_backends(models, tokens):
    sae = load_sae("zoo:tiny-mistral/base-sae")
    config = EvalConfig(hook=HOOK, batch_size=8)
    hooked, bridged = (evaluate_transfer(models[b]["instruct"], sae, tokens, config) for b in BACKENDS)
    _close(bridged.to_row(), hooked.to_row())


def test_a_pass_across_hooks_gives_equal_numbers_on_both_backends(models, tokens):
    """A release's SAEs at every layer: one clean forward keeps each hook's residual (`run_keeping_hooks`)."""
    names = [f"release-a-pt/layer_{layer}" for layer in range(4)]
    saes = [load_sae(f"zoo:tiny-mistral/{name}") for name in names]
    variants = [(sae, EvalConfig(hook=sae.cfg.metadata.hook_name, batch_size=8)) for sae in saes]
    hooked, bridged = (evaluate_shared(models[b]["base"], variants, tokens) for b in BACKENDS)
    for got, expected in zip(bridged, hooked, strict=True):
        _close(got.to_row(), expected.to_row())


def test_a_paired_pass_gives_equal_numbers_on_both_backends(models, tokens):
    """Densities, activation and logit-weight similarity (the bridge's unembedding folded as HookedTransformer's)."""
    sae = load_sae("zoo:tiny-mistral/base-sae")
    config = PairedConfig(hook=HOOK, batch_size=8)
    hooked, bridged = (
        evaluate_universality(models[b]["base"], models[b]["instruct"], sae, tokens, config) for b in BACKENDS
    )
    _close(dict(bridged.summary()), dict(hooked.summary()))
    for name in ("activation_similarity", "logit_similarity"):
        a, b = getattr(bridged, name), getattr(hooked, name)
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.allclose(a.nan_to_num(), b.nan_to_num(), rtol=FLOAT_FLOOR_REL, atol=FLOAT32_ROUNDING), name


def test_rollouts_are_the_same_tokens_on_both_backends(models):
    """HookedTransformer's cached greedy decoding and the bridge's (HF's `generate`, its KV cache handed to the
    bridge) pick the same tokens."""
    from sae_bench.sources.chat import greedy_rollouts
    from sae_bench.sources.loading import end_of_turn_id, load_chat_prompts

    rows = {}
    for backend in BACKENDS:
        model = models[backend]["instruct"]
        prompts = load_chat_prompts("zoo:instructions-heldout", model.tokenizer)[:6]
        stop = end_of_turn_id(model.tokenizer, chat_template=True)
        rows[backend] = greedy_rollouts(
            model, prompts, max_new_tokens=32, stop_token=stop, pad_token=model.tokenizer.pad_token_id, context=128
        )
    assert torch.equal(rows["hooked"].tokens, rows["bridge"].tokens)
    assert torch.equal(rows["hooked"].length, rows["bridge"].length)


def test_the_bridge_runs_the_floor(tmp_path):
    """The executor on the bridge: the blocks before a hook are skipped in every continuation, so the counted
    forward passes equal the floor, as on HookedTransformer."""
    from sae_bench.cases.registry import SHIPPED_CASES, load_registry
    from sae_bench.execution.executor import CaseExecutor

    cases = [c for c in load_registry(SHIPPED_CASES) if c.id in ("tiny-gemma/base-sae@base", "tiny-gemma/it-sae@base")]
    counted = {}
    for backend in BACKENDS:
        executor = CaseExecutor(backend=backend)
        executor.plan(cases)
        values = [executor.measure(case) for case in cases]
        table = executor.cost.table().iloc[-1]
        assert table.fpe_run == table.fpe_floor
        counted[backend] = (float(table.fpe_run), values)
    assert counted["bridge"][0] == counted["hooked"][0]
    for got, expected in zip(counted["bridge"][1], counted["hooked"][1], strict=True):
        _close(got, expected)


def test_an_unknown_backend_is_one_message():
    with pytest.raises(BadInput, match="backend 'jax': one of bridge, hooked"):
        load_model("zoo:tiny-mistral/base", backend="jax")


def test_the_bridge_is_the_default_and_a_hooked_transformer_is_built_only_on_purpose():
    """pyproject.toml turns TransformerLens's deprecation of HookedTransformer into an error; the `hooked` backend and
    the deliberate references build theirs under `hooked_transformer_on_purpose`."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_bench.engine.backends import BridgeBackend, backend_of, hooked_transformer_on_purpose

    assert BACKENDS[0] == "bridge"
    assert isinstance(backend_of(load_model("zoo:tiny-mistral/base")), BridgeBackend)
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, n_heads=2, d_vocab=5, act_fn="relu")
    with pytest.raises(DeprecationWarning, match="HookedTransformer is deprecated"):
        HookedTransformer(cfg)
    with hooked_transformer_on_purpose():
        assert HookedTransformer(cfg).cfg.n_layers == 1
    load_model("zoo:tiny-mistral/base", backend="hooked")  # the hooked backend builds its own on purpose


def test_each_model_gets_its_backend_and_both_report_the_same_model(models):
    from sae_bench.engine.backends import BridgeBackend, HookedBackend, backend_of

    hooked, bridge = backend_of(models["hooked"]["base"]), backend_of(models["bridge"]["base"])
    assert type(hooked) is HookedBackend and type(bridge) is BridgeBackend
    for size in ("n_layers", "d_model", "d_vocab", "device", "dtype", "is_causal"):
        assert getattr(hooked, size) == getattr(bridge, size), size
    assert hooked.residual_hooks() == bridge.residual_hooks()
    assert hooked.residual_hooks()[0] == "blocks.0.hook_resid_pre" and len(hooked.residual_hooks()) == 8


def test_each_backend_keeps_the_residual_run_to_hook_gives(models, tokens):
    """`run_keeping` keeps, at every cut, exactly the residual `run_to_hook` gives there, and its last residual is
    the one every continuation ends in."""
    from sae_bench.engine.backends import backend_of

    for backend in BACKENDS:
        model = backend_of(models[backend]["base"])
        kept, final = model.run_keeping(tokens[:4], [1, 3, 4])
        for blocks_before, residual in kept.items():
            assert torch.equal(residual, model.run_to_hook(tokens[:4], blocks_before)), (backend, blocks_before)
        assert torch.allclose(model.final_residual_from(kept[1], 1), final, atol=1e-5), backend


def test_weight_drift_reads_the_checkpoints_weights_by_layer(models):
    """On the bridge, drift reads the HF model's raw weights, each layer's tensors under "block NNN": equal to a
    plain reference on the HF state dicts."""
    from sae_bench.engine.drift import weight_drift

    base, instruct = models["bridge"]["base"], models["bridge"]["instruct"]
    drift = weight_drift(base, instruct)
    hf_base = {name: w.detach() for name, w in base.original_model.named_parameters()}
    hf_instruct = {name: w.detach() for name, w in instruct.original_model.named_parameters()}
    layer_2 = [name for name in hf_base if name.startswith("model.layers.2.")]
    expected = torch.sqrt(sum((hf_instruct[n].double() - hf_base[n].double()).pow(2).sum() for n in layer_2))
    expected /= torch.sqrt(sum(hf_base[n].double().pow(2).sum() for n in layer_2))
    by_layer = dict(zip(drift.per_layer.layer, drift.per_layer.relative, strict=True))
    assert by_layer["block 002"] == pytest.approx(float(expected), rel=1e-12)
    assert {f"block {i:03d}" for i in range(4)} <= set(by_layer)
    assert weight_drift(base, base).overall == 0.0
    hooked = weight_drift(models["hooked"]["base"], models["hooked"]["instruct"])
    assert hooked.overall == drift.overall  # the checkpoint's weights, whichever backend runs the model
