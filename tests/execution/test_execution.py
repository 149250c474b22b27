"""The case executor shares token rows only between cases that read the same text with the same tokenizer."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import sae_bench.execution.sources_cache
from sae_bench.cases.registry import Case, ModelKey
from sae_bench.engine.backends import backend_of
from sae_bench.execution.executor import CaseExecutor, split_rows
from sae_bench.execution.sources_cache import CaseTokens

CASE = Case(
    id="f/s@m",
    family="f",
    file="f.toml",
    sae_name="s",
    sae="zoo:s",
    model_name="m",
    model="hf:org/model-a",
    hook="blocks.0.hook_resid_pre",
    dataset="hf:org/text",
    tokens=8,
    context=4,
    groups=("ce",),
)


def _executor(monkeypatch) -> CaseExecutor:
    executor = CaseExecutor()
    for spec, name in (("hf:org/model-a", "tok-a"), ("hf:org/model-b", "tok-b"), ("hf:org/model-a-ft", "tok-a")):
        executor.sources._models[ModelKey(spec)] = SimpleNamespace(tokenizer=SimpleNamespace(name_or_path=name))

    def rows(dataset, n_rows, context, model):
        return torch.full((n_rows, context), 1 if model.tokenizer.name_or_path == "tok-a" else 2)

    monkeypatch.setattr(sae_bench.execution.sources_cache, "load_dataset_rows", rows)
    return executor


def test_models_with_other_tokenizers_get_their_own_rows(monkeypatch):
    executor = _executor(monkeypatch)
    a = executor.tokens(CASE)
    b = executor.tokens(replace(CASE, model="hf:org/model-b"))
    assert int(a.tokens[0, 0]) == 1 and int(b.tokens[0, 0]) == 2
    assert executor.tokens(replace(CASE, id="f/t@m")) is a  # same text, budget and tokenizer: shared


def test_paired_cases_read_the_text_with_the_base_models_tokenizer(monkeypatch):
    executor = _executor(monkeypatch)
    paired = replace(CASE, model="hf:org/model-b", base_model="hf:org/model-a", groups=("residual",))
    assert int(executor.tokens(paired).tokens[0, 0]) == 1


def test_split_rows_gives_disjoint_equal_slices():
    tokens = torch.arange(20).view(10, 2)
    parts = split_rows(CaseTokens(tokens[:, 1:], None, full_rows=tokens), 3)
    assert [p.tokens.shape[0] for p in parts] == [3, 3, 3]
    assert torch.equal(torch.cat([p.tokens for p in parts]), tokens[:9, 1:])
    assert torch.equal(torch.cat([p.full_rows for p in parts]), tokens[:9])  # row for row with the cut rows


@pytest.mark.full
def test_a_planned_family_shares_passes_at_the_floor_and_releases_each_model_after_its_last_case():
    """tiny-qwen2's grid (3 SAEs × 2 models, unfiltered and filtered): one shared pass per model, the clean and
    zero continuations once, one spliced continuation per distinct spliced residual, each model loaded once and
    released after its last case. Counted in block rows, not timed."""
    from collections import Counter

    from sae_bench.cases.registry import SHIPPED_CASES, load_registry

    cases = [c for c in load_registry(SHIPPED_CASES) if c.family == "tiny-qwen2" and not c.paired and c.mask == "all"]
    cases.sort(key=lambda c: c.model_name)  # base first, then chat, as the suite plans them
    executor, rows = CaseExecutor(), Counter()
    load = executor.model

    def counting_model(spec):
        model = load(spec)
        if not getattr(model, "_rows_counted", False):
            model._rows_counted = True

            def count(layer, n, spec=spec):
                rows[(spec, layer)] += n

            backend_of(model).count_block_rows(count)
        return model

    executor.model = counting_model
    executor.plan(cases)
    live_after = {}
    for case in cases:
        executor.measure(case)
        executor.done(case)
        live_after[case.id] = executor.live_models()
    assert [len(group) for group in executor.shared_passes] == [6, 6]
    n_rows = cases[0].tokens // cases[0].context
    for spec in (ModelKey("zoo:tiny-qwen2/base"), ModelKey("zoo:tiny-qwen2/chat")):
        # prefix (blocks 0, 1): once, shared by the mean-norm threshold of the filtered cases and the pass;
        # continuation (blocks 2, 3): clean + 3 spliced (tiny-qwen2 has no outliers: filtered = unfiltered) + one
        # all-zero row for the pass's zero ablation (every position of every batch ablated)
        assert [rows[(spec, layer)] for layer in range(4)] == [n_rows] * 2 + [4 * n_rows + 1] * 2, spec
        assert executor.cost.run[str(spec)] == executor.cost.floor[str(spec)] == sum(rows[(spec, i)] for i in range(4))
    assert executor.model_loads == Counter({ModelKey("zoo:tiny-qwen2/base"): 1, ModelKey("zoo:tiny-qwen2/chat"): 1})
    assert executor.model_releases == executor.model_loads
    last_base = [c.id for c in cases if c.model_name == "base"][-1]
    assert live_after[last_base] == [] and live_after[cases[-1].id] == []


def test_an_sae_that_fails_in_a_shared_pass_fails_only_its_own_cases(tmp_path):
    """A reconstruction that overflows float32 fails its case, named by its spec; the other SAE of the same pass
    gets the numbers it gets in a pass without it."""
    import pytest

    from sae_bench.cases.registry import SHIPPED_CASES, load_registry
    from sae_bench.errors import UnusableSAE
    from sae_bench.sources.loading import load_sae

    case = replace(load_registry(SHIPPED_CASES).get("tiny-qwen2/base-sae@chat"), tokens=1024)
    sae = load_sae(case.sae)
    with torch.no_grad():
        sae.W_enc.mul_(1e25)
        sae.W_dec.mul_(1e25)
    sae.save_model(tmp_path / "overflowing")
    broken = replace(case, id="tiny-qwen2/overflowing@chat", sae=str(tmp_path / "overflowing"))
    together = CaseExecutor()
    together.plan([broken, case])
    with pytest.raises(UnusableSAE, match=f"SAE {tmp_path / 'overflowing'}: SAE reconstruction: .* NaN/Inf"):
        together.measure(broken)
    assert together.shared_passes == [[case.id]]  # the pass of both failed on the broken SAE; it ran again without
    alone = CaseExecutor()
    alone.plan([case])
    assert together.measure(case) == alone.measure(case)
    assert alone.measure(case)["ce_loss_recovered"] is not None


def test_cases_at_several_hooks_share_one_pass_at_the_floor(tmp_path):
    """A release's SAEs at different layers of one model and token set: one pass, one clean forward, each hook's
    continuations once; every case's numbers those of its pair alone (to float32 rounding); run = floor."""
    import pytest
    from sae_lens import StandardSAE, StandardSAEConfig

    from sae_bench.cases.registry import SHIPPED_CASES, load_registry
    from sae_bench.engine.metrics import FLOAT32_ROUNDING
    from sae_bench.expectations.rules import FLOAT_FLOOR_REL

    case = replace(load_registry(SHIPPED_CASES).get("tiny-mistral/base-sae@instruct"), tokens=2048)
    others = []
    for layer in (1, 3):
        hook = f"blocks.{layer}.hook_resid_post"
        torch.manual_seed(layer)
        config = StandardSAEConfig(d_in=128, d_sae=256)
        config.metadata.hook_name = hook
        StandardSAE(config).save_model(tmp_path / f"layer-{layer}")
        others.append(replace(case, id=f"{case.id}-l{layer}", sae=str(tmp_path / f"layer-{layer}"), hook=hook))
    executor = CaseExecutor()
    executor.plan([case, *others])
    together = {c.id: executor.measure(c) for c in (case, *others)}
    assert executor.shared_passes == [[case.id, *(o.id for o in others)]]
    cost = executor.cost.table().set_index("model")
    assert cost.loc["total", "fpe_run"] == cost.loc["total", "fpe_floor"]
    for member in (case, *others):
        alone = CaseExecutor()
        alone.plan([member])
        for name, value in alone.measure(member).items():
            if isinstance(value, float):
                assert together[member.id][name] == pytest.approx(value, rel=FLOAT_FLOOR_REL, abs=FLOAT32_ROUNDING)
            else:  # the hook, counts, undefined metrics
                assert together[member.id][name] == value, name
