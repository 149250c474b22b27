"""The case executor shares token rows only between cases that read the same text with the same tokenizer."""

from dataclasses import replace
from types import SimpleNamespace

import torch

import sae_bench.sources
from sae_bench.cases import Case
from sae_bench.execution import CaseExecutor, split_rows

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
        executor._models[spec] = SimpleNamespace(tokenizer=SimpleNamespace(name_or_path=name))

    def rows(dataset, n_rows, context, model):
        return torch.full((n_rows, context), 1 if model.tokenizer.name_or_path == "tok-a" else 2)

    monkeypatch.setattr(sae_bench.sources, "load_dataset_rows", rows)
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
    parts = split_rows(SimpleNamespace(tokens=tokens, position_mask=None), 3)
    assert [p.tokens.shape[0] for p in parts] == [3, 3, 3]
    assert torch.equal(torch.cat([p.tokens for p in parts]), tokens[:9])
