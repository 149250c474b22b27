"""The hub cases follow the seed studies' conventions: Kissane's templates, masks and Pile rows; Kutsyk's raw
Gemma input; unreleased SAEs skip with a way to supply one; published files carry the papers' own tables."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.sources import kissane_prompts
from sae_bench.sources.chat import ChatRows
from sae_bench.sources.rehearsal.miniatures import MINIATURES, build_tokenizer
from sae_bench.sources.rehearsal.stand_ins import write_dataset

INSTRUCTION = "Name three uses of a list."
CHAT_REPOS = {
    "mistral": "mistralai/Mistral-7B-Instruct-v0.1",
    "qwen": "Qwen/Qwen1.5-0.5B-Chat",
    "gemma": "google/gemma-2b-it",
}


@pytest.fixture(scope="module")
def tokenizers():
    """The rehearsal miniatures' tokenizers: each family's special tokens, BOS habit and real chat template."""
    return {name: build_tokenizer(MINIATURES[repo].tokenizer) for name, repo in CHAT_REPOS.items()}


@pytest.fixture
def local_datasets(tmp_path, monkeypatch):
    for repo in ("tatsu-lab/alpaca", "monology/pile-uncopyrighted"):
        write_dataset(tmp_path, repo)
    monkeypatch.setenv("SAE_BENCH_DATASETS", str(tmp_path))
    return tmp_path


def test_alpaca_prompts_are_kissanes_token_ids_not_the_chat_template(tokenizers, local_datasets):
    from sae_bench.sources.hub import load_alpaca_instructions
    from sae_bench.sources.loading import load_chat_prompts

    expected_text = {
        "mistral": f" [INST] {INSTRUCTION} [/INST] ",
        "qwen": f"<|im_start|>user\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n",
        "gemma": f"<start_of_turn>user\n{INSTRUCTION}<end_of_turn>\n<start_of_turn>model\n",
    }
    for name, tokenizer in tokenizers.items():
        ids = kissane_prompts.prompt(tokenizer, name, INSTRUCTION).ids
        assert ids == tokenizer(expected_text[name])["input_ids"]  # one string, default special tokens
        assert ids != tokenizer.apply_chat_template(
            [{"role": "user", "content": INSTRUCTION}], add_generation_prompt=True, tokenize=True
        ), name
        first = tokenizer.convert_ids_to_tokens(ids[0])
        assert first == {"mistral": "<s>", "qwen": "<|im_start|>", "gemma": "<bos>"}[name]  # Qwen: no BOS, no system
        instructions = load_alpaca_instructions(f"alpaca:tatsu-lab/alpaca?template={name}")
        prompts = load_chat_prompts(f"alpaca:tatsu-lab/alpaca?template={name}", tokenizer)
        assert [p.ids for p in prompts] == [
            tokenizer(expected_text[name].replace(INSTRUCTION, i))["input_ids"] for i in instructions
        ]


def test_kissane_user_span_follows_his_markers(tokenizers):
    for name, tokenizer in tokenizers.items():
        prompt = kissane_prompts.prompt(tokenizer, name, INSTRUCTION)
        soi, eoi = kissane_prompts.markers(tokenizer, name)
        assert prompt.user_start == len(soi)
        assert prompt.ids[prompt.user_stop : prompt.user_stop + len(eoi)] == eoi
    # his Mistral hack: soi keeps <s>, eoi drops its last token; Gemma's soi omits <bos>, so his span starts early
    soi, _ = kissane_prompts.markers(tokenizers["mistral"], "mistral")
    assert soi[0] == tokenizers["mistral"].bos_token_id
    soi, _ = kissane_prompts.markers(tokenizers["gemma"], "gemma")
    assert tokenizers["gemma"].bos_token_id not in soi


def test_kissane_rows_retokenise_the_completion_and_drop_the_last_two_positions(tokenizers):
    for name, tokenizer in tokenizers.items():
        prompt = kissane_prompts.prompt(tokenizer, name, INSTRUCTION)
        reply = tokenizer("Use it to keep items in order", add_special_tokens=False)["input_ids"]
        stop = tokenizer.convert_tokens_to_ids(kissane_prompts.END_OF_TURN[name])
        generated_ids = prompt.ids + reply + [stop]
        generated = ChatRows(
            torch.tensor([generated_ids + [0] * 10]),
            torch.tensor([len(prompt.ids)]),
            torch.tensor([len(generated_ids)]),
            torch.tensor([prompt.user_start]),
            torch.tensor([prompt.user_stop]),
        )
        rows = kissane_prompts.rows(generated, [INSTRUCTION], tokenizer, name, stop_token=stop, context=128)
        completion = tokenizer.decode(reply, skip_special_tokens=False)
        ids = tokenizer(kissane_prompts.TEMPLATES[name].format(instruction=INSTRUCTION) + completion)["input_ids"]
        assert rows.tokens[0, : len(ids)].tolist() == ids and int(rows.length[0]) == len(ids)  # end of turn cut
        soi, eoi = kissane_prompts.markers(tokenizer, name)
        i = prompt.user_stop
        rollout = rows.mask("rollout")[0].nonzero().flatten().tolist()
        assert rollout == list(range(i + len(eoi) - 1, len(ids) - 2))  # his loss_mask: last_idx and last_idx − 1 off
        assert rows.mask("user-prompt")[0].nonzero().flatten().tolist() == list(range(len(soi), i))


def test_pile_rows_carry_bos_between_documents_where_the_case_says_so(tokenizers, local_datasets):
    from sae_bench.sources.hub import load_hub_rows

    tokenizer = tokenizers["mistral"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    rows = load_hub_rows("hf:monology/pile-uncopyrighted?sep=bos", 6, 256, tokenizer)
    assert rows.shape == (6, 256) and bool((rows[:, 0] == bos).all())
    assert int((rows[:, 1:] == bos).sum()) > 0 and int((rows == eos).sum()) == 0  # documents joined by BOS
    assert not bool(((rows[:, :-1] == bos) & (rows[:, 1:] == bos)).any())  # never BOS BOS
    documents = [
        json.loads(line)["text"] for line in open(local_datasets / "monology/pile-uncopyrighted/train/00.jsonl")
    ]
    first = tokenizer(documents[0], add_special_tokens=False)["input_ids"]
    assert rows[0, 1 : 1 + len(first[:255])].tolist() == first[:255]
    plain = load_hub_rows("hf:monology/pile-uncopyrighted", 6, 256, tokenizer)
    assert int((plain[:, 1:] == bos).sum()) == 0 and int((plain == eos).sum()) > 0


def test_rows_of_a_store_without_prepend_bos_are_the_plain_concatenation(tokenizers, local_datasets):
    """`?sep=none` (SAELens 3.22's store with prepend_bos = false): no BOS, no EOS, documents back to back."""
    from sae_bench.sources.hub import load_hub_rows

    tokenizer = tokenizers["mistral"]
    rows = load_hub_rows("hf:monology/pile-uncopyrighted?sep=none", 6, 256, tokenizer)
    assert int((rows == tokenizer.bos_token_id).sum()) == 0 and int((rows == tokenizer.eos_token_id).sum()) == 0
    documents = [
        json.loads(line)["text"] for line in open(local_datasets / "monology/pile-uncopyrighted/train/00.jsonl")
    ]
    stream = [token for text in documents for token in tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert rows.flatten().tolist() == stream[: rows.numel()]


def test_every_case_of_an_sae_trained_without_bos_reads_rows_without_separators():
    """The SAE's own store convention decides the rows: prepend_bos = false → `?sep=none` (the residual-similarity
    case reads its own store, the LanguageModelSAERunnerConfig default with BOS)."""
    from sae_bench.sources.rehearsal.stand_ins import RELEASE_CONFIGS

    for case in load_registry(SHIPPED_CASES):
        release = case.sae.removeprefix("saelens:").split("/")[0]
        if release in RELEASE_CONFIGS and case.variant != "residual":
            separated = not RELEASE_CONFIGS[release]["prepend_bos"]
            assert ("sep=none" in case.dataset) == separated, case.id


def test_kutsyk_universality_rows_and_positions_are_his(monkeypatch):
    """Mistral (no BOS in the store): every position, position 0 included. Gemma (a BOS-prepending store): the rows
    lose their first token before any model runs, and every position of what is left counts."""
    import sae_bench.execution.sources_cache
    from sae_bench.execution.executor import CaseExecutor

    registry = load_registry(SHIPPED_CASES)
    mistral = registry.get("mistral-7b/res-wg-l8@base-vs-math")
    gemma = registry.get("gemma-2b/res-jb-l6@base-vs-python-codes/without-bos")
    bos = 2
    executor = CaseExecutor()
    for case in (mistral, gemma):
        executor.sources._models[case.base_model_key] = SimpleNamespace(
            tokenizer=SimpleNamespace(name_or_path=case.base_model)
        )

    def rows(dataset, n_rows, context, model):  # rows as the store cuts them: BOS first where it prepends one
        head = [bos] if "sep=bos" in dataset else []
        return torch.tensor([head + list(range(10, 10 + context - len(head)))] * n_rows)

    monkeypatch.setattr(sae_bench.execution.sources_cache, "load_dataset_rows", rows)
    mistral_rows = executor.tokens(mistral)
    assert mistral.mask == "all" and mistral_rows.position_mask is None  # position 0 counts
    gemma_rows = executor.tokens(gemma)
    assert gemma.mask == "all" and gemma_rows.position_mask is None
    assert gemma_rows.tokens.shape[1] == gemma.context - 1 and int((gemma_rows.tokens == bos).sum()) == 0
    assert gemma_rows.tokens[0, 0] == 10  # the row's first token after the BOS it lost


def test_stand_in_sae_configs_mirror_the_releases_the_cases_document():
    """The fields that change the numbers: a stand-in with another prepend_bos or apply_b_dec_to_input would
    rehearse another SAE."""
    from sae_bench.sources.rehearsal.stand_ins import RELEASE_CONFIGS, release_config

    seen = set()
    for case in load_registry(SHIPPED_CASES):
        release, _, sae_id = case.sae.removeprefix("saelens:").partition("/")
        if release not in RELEASE_CONFIGS or case.variant == "residual":
            continue
        seen.add(release)
        config = release_config(release, "stand-in", sae_id)
        assert config["hook_point"] == case.hook, case.id
        assert config["context_size"] == case.context, case.id
        assert config["dataset_path"] == case.dataset.removeprefix("hf:").split("?")[0], case.id
        assert config["prepend_bos"] == ("sep=none" not in case.dataset), case.id
        assert (config["apply_b_dec_to_input"], config["normalize_activations"]) == (False, "none"), case.id
    assert seen == {"mistral-7b-res-wg", "gemma-2b-res-jb"}


def test_kissane_pile_cases_read_rows_with_bos_separators():
    for case in load_registry(SHIPPED_CASES):
        if (
            case.family in ("mistral-7b", "qwen1.5-0.5b", "gemma-2b")
            and "pile" in case.dataset
            and "res-" not in case.id
        ):
            assert "sep=bos" in case.dataset, case.id


def test_kutsyk_gemma_sae_reads_raw_activations_with_a_raw_threshold_of_290():
    registry = load_registry(SHIPPED_CASES)
    for case_id in ("gemma-2b/res-jb-l6@base", "gemma-2b/res-jb-l6@python-codes"):
        case = registry.get(case_id)
        assert case.scaling_factor is None
        assert (case.outliers.threshold, case.outliers.norm) == (290, "raw")
        assert registry.get(f"{case_id}/all-tokens").outliers is None  # L0 and dead features over every token


def test_unreleased_kissane_gemma_saes_skip_with_how_to_supply_one(monkeypatch):
    from sae_bench.suite.runner import missing_for

    reason = missing_for(load_registry(SHIPPED_CASES).get("gemma-2b/base-sae@base"), "cuda")
    assert "never released" in reason and "--sae" in reason and "wandb credentials" not in reason


def _published(case_id: str):
    from sae_bench.expectations.rules import read_expectations

    return read_expectations(load_registry(SHIPPED_CASES).get(case_id).expectation_path(EXPECTATIONS))


EXPECTATIONS = SHIPPED_CASES.parents[1] / "expectations"


def test_kutsyk_figures_are_the_papers_tables():
    assert _published("gemma-2b/res-jb-l6@base").metrics["explained_variance_flattened"].value == 0.97
    assert _published("gemma-2b/res-jb-l6@base/all-tokens").metrics["l0"].value == 53.59
    assert _published("mistral-7b/res-wg-l8@math/all-tokens").metrics["dead_fraction"].value == 0.0064
    features = _published("gemma-2b/res-jb-l6@base-vs-python-codes/without-bos")
    assert features.metrics["activation_similarity_regular_mean"].value == 0.39  # section 5.2 (notebook: 0.43)
    # section 3's table: Gemma 0.6691, Mistral 0.9648
    assert _published("gemma-2b/res-jb-l6@base-vs-python-codes/residual").metrics["residual_cosine"].value == 0.6691
    assert _published("mistral-7b/res-wg-l8@base-vs-math/residual").metrics["residual_cosine"].value == 0.9648
    buggy = _published("gemma-2b/res-jb-l6@python-codes").unchecked["ce_spliced"]
    assert "published 7.5" in buggy and "flattened-splice" in buggy  # kept, with the caveat, not dropped


def test_a_collapsed_transfer_is_checked_one_sided_and_keeps_its_numbers():
    collapsed = _published("gemma-2b/it-sae@base")  # Kissane: EV −2662, L0 6928, CE recovered −8.32
    ev = collapsed.metrics["explained_variance_per_token"]
    assert ev.one_sided and ev.value == 0.0 and ev.provenance["published_value"] == pytest.approx(-2662.135986328125)
    assert ev.verdict(-2000.0) == "ok" and ev.verdict(0.6) == "improved"
    assert collapsed.metrics["ce_loss_recovered_batch_mean"].one_sided
    assert "published 6928.72" in collapsed.unchecked["l0"]
    healthy = _published("mistral-7b/base-sae@base")
    assert not any(m.one_sided for m in healthy.metrics.values())


def test_a_difference_takes_its_tolerance_from_its_terms():
    import math

    expected = _published("mistral-7b/base-sae@base")
    terms = (expected.metrics["ce_spliced"].threshold, expected.metrics["ce_clean"].threshold)
    assert expected.metrics["ce_delta"].threshold == pytest.approx(math.hypot(*terms))
    assert expected.metrics["ce_delta"].threshold > 0.1  # not 16 % of a 0.11 delta
