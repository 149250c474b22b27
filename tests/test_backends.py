"""The two model backends (`sources.BACKENDS`) give the engine equal numbers: a transfer pass, a pass across hooks,
a paired universality pass and chat rollouts on zoo models, each on HookedTransformer and on TransformerBridge; the
bridge's forward passes are counted at the floor; a wrong backend is one message."""

from __future__ import annotations

import pytest
import torch

from sae_bench.errors import BadInput
from sae_bench.evaluate import EvalConfig, evaluate_shared, evaluate_transfer
from sae_bench.expectations import FLOAT_FLOOR_REL
from sae_bench.metrics import FLOAT32_ROUNDING
from sae_bench.sources import BACKENDS, load_model, load_sae, load_zoo_data
from sae_bench.universality import PairedConfig, evaluate_universality

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
    """HookedTransformer's cached greedy decoding and HF's uncached one (`chat._generate`) pick the same tokens."""
    from sae_bench.chat import greedy_rollouts
    from sae_bench.sources import end_of_turn_id, load_chat_prompts

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
    from sae_bench.cases import SHIPPED_CASES, load_registry
    from sae_bench.execution import CaseExecutor

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
    with pytest.raises(BadInput, match="backend 'jax': one of hooked, bridge"):
        load_model("zoo:tiny-mistral/base", backend="jax")
