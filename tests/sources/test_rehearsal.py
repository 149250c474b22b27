"""The hub tier rehearsed offline: published files cover their cases, stand-ins load through the real loaders,
a rehearsed run writes nothing and its comparison is live, the gate dry-runs, published values are kept.

Rehearsed runs go through a subprocess (`--rehearse` must configure huggingface_hub before it is imported); they
share the suite's stand-in build (`sae_bench.sources.rehearsal.stand_in_root()`, keyed by the stand-in recipe).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.expectations.rules import read_expectations

pytestmark = pytest.mark.full  # the full tier only: `make test-fast` leaves this file out

REPO = Path(__file__).resolve().parents[2]
EXPECTATIONS = REPO / "expectations"
ROLLOUT_CASE = "mistral-7b/base-sae@instruct/rollout"
PAIRED_CASE = "gemma-2b/res-jb-l6@base-vs-python-codes/without-bos"


def _digest(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.json"))}


def _pytest(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    command = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "--benchmark-disable", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_every_hub_metric_is_expected_or_unchecked_with_a_reason():
    """Every hub case has a published file covering its groups, unless its family has no published numbers."""
    from sae_bench.expectations.published import NOT_PUBLISHED

    for case in load_registry(SHIPPED_CASES):
        if case.tier != "hub":
            continue
        if case.family in NOT_PUBLISHED:  # no file until a first real run writes a measured one
            path = case.expectation_path(EXPECTATIONS)
            assert not path.exists() or read_expectations(path).provenance["kind"] == "measured", case.id
            continue
        expected = read_expectations(case.expectation_path(EXPECTATIONS))
        assert expected.provenance["kind"] == "published", case.id
        for group in case.groups:
            for name in case.metrics(group):
                assert name in expected.metrics or expected.unchecked.get(name), f"{case.id}: {name}"


def test_local_wandb_artifact_loads_an_old_format_sae_as_the_real_loader_would(tmp_path, monkeypatch):
    from sae_lens import StandardSAE
    from safetensors.torch import load_file

    from sae_bench.sources.loading import load_sae
    from sae_bench.sources.rehearsal.stand_ins import write_wandb_sae

    body = "ckkissane/qwen-500M-base/sae_qwen1.5-0.5b_blocks.13.hook_resid_pre_32768:v0"
    directory = write_wandb_sae(tmp_path / "artifacts", body, "blocks.13.hook_resid_pre")
    assert directory.name == "sae_qwen1.5-0.5b_blocks.13.hook_resid_pre_32768:v0"  # `wandb artifact get`'s folder
    config = json.loads((directory / "cfg.json").read_text())
    assert config["sae_lens_training_version"] == "3.12.1" and config["hook_layer"] == 13
    written = load_file(directory / "sae_weights.safetensors")
    assert torch.equal(written["scaling_factor"], torch.ones_like(written["b_enc"]))  # SAELens 3.x's leftover

    monkeypatch.setenv("WANDB_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sae = load_sae(f"wandb:{body}")  # no credentials, no network: the local folder is the source
    assert isinstance(sae, StandardSAE)
    assert sae.cfg.metadata.hook_name == "blocks.13.hook_resid_pre"
    assert "finetuning_scaling_factor" not in dict(sae.named_parameters())  # all ones: dropped, as SAELens does
    assert torch.equal(sae.W_enc, written["W_enc"]) and torch.equal(sae.W_dec, written["W_dec"])
    x = torch.randn(5, sae.cfg.d_in)
    expected = torch.relu(x @ written["W_enc"] + written["b_enc"])  # apply_b_dec_to_input is false in this cfg
    torch.testing.assert_close(sae.encode(x), expected)


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    """One rehearsed run of a chat case (wandb SAE, rollouts) and a paired case (SAELens release, Gemma, `as=`)."""
    table = tmp_path_factory.mktemp("rehearsal") / "verdicts.csv"
    before = _digest(EXPECTATIONS)
    run = _pytest(
        "-m", "hub", "--rehearse", "--case-id", ROLLOUT_CASE, "--case-id", PAIRED_CASE, "--verdict-table", str(table)
    )
    return run, before, pd.read_csv(table) if table.exists() else None


def test_rehearsal_runs_hub_cases_end_to_end_and_writes_nothing(rehearsed):
    run, before, table = rehearsed
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "4 passed" in run.stdout and "skipped" not in run.stdout.split("hub rehearsal")[-1]
    assert _digest(EXPECTATIONS) == before
    for case_id in (ROLLOUT_CASE, PAIRED_CASE):
        expected = read_expectations(load_registry(SHIPPED_CASES).get(case_id).expectation_path(EXPECTATIONS))
        compared = set(table[table.case == case_id].metric)
        assert compared == set(expected.metrics), case_id  # every published value was compared


def test_rehearsed_comparison_is_live_a_broken_sae_regresses(rehearsed, tmp_path):
    from safetensors.torch import load_file, save_file

    from sae_bench.sources.hub import wandb_artifact_dir
    from sae_bench.sources.rehearsal import environment, stand_in_root

    _, _, table = rehearsed
    # expectations that hold what the stand-in SAE measured, tight, in a folder of their own
    path = load_registry(SHIPPED_CASES).get(ROLLOUT_CASE).expectation_path(tmp_path / "expectations")
    path.parent.mkdir(parents=True)
    got = table[table.case == ROLLOUT_CASE].set_index("metric").got
    document = json.loads(load_registry(SHIPPED_CASES).get(ROLLOUT_CASE).expectation_path(EXPECTATIONS).read_text())
    for name, entry in document["metrics"].items():
        entry.update(value=float(got[name]), abs=1e-4 * max(1.0, abs(float(got[name]))), rel=0.0)
    path.write_text(json.dumps(document))

    # the same SAE with its decoder rows shuffled
    spec = load_registry(SHIPPED_CASES).get(ROLLOUT_CASE).sae
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_ARTIFACT_DIR", environment(stand_in_root())["WANDB_ARTIFACT_DIR"])
        source = wandb_artifact_dir(spec.removeprefix("wandb:"))
    broken = tmp_path / "broken-sae"
    broken.mkdir()
    weights = load_file(source / "sae_weights.safetensors")
    weights["W_dec"] = weights["W_dec"][torch.randperm(weights["W_dec"].shape[0], generator=torch.Generator())]
    save_file(weights, broken / "sae_weights.safetensors")
    (broken / "cfg.json").write_text((source / "cfg.json").read_text())

    verdicts = tmp_path / "verdicts.csv"
    run = _pytest(
        "-m",
        "hub",
        "--rehearse",
        "--case-id",
        ROLLOUT_CASE,
        "--expectations-dir",
        str(tmp_path / "expectations"),
        "--sae",
        str(broken),
        "--verdict-table",
        str(verdicts),
    )
    assert run.returncode == 0, run.stdout[-4000:]  # a rehearsal reports verdicts, it does not judge them
    result = pd.read_csv(verdicts).set_index("metric").verdict
    assert result["mse"] == "regression" and result["ce_spliced"] == "regression"
    assert result["l0"] == "ok"  # same encoder


def test_gate_dry_runs_a_release_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    command = [
        sys.executable,
        "-m",
        "sae_bench.cli",
        "gate",
        "--rehearse",
        "--sae",
        "saelens:gemma-2b-res-jb/blocks.6.hook_resid_post",
        "--cases",
        "res-jb-l6@base and not vs",
        "--table",
        str(tmp_path / "gate.csv"),
    ]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    table = pd.read_csv(tmp_path / "gate.csv")
    assert set(table.case) == {"gemma-2b/res-jb-l6@base", "gemma-2b/res-jb-l6@base/all-tokens"} and len(table) > 0


def test_update_refuses_to_overwrite_a_published_file(tmp_path):
    case = load_registry(SHIPPED_CASES).get("tiny-qwen2/base-sae@chat")
    path = case.expectation_path(tmp_path)
    path.parent.mkdir(parents=True)
    document = json.loads(case.expectation_path(EXPECTATIONS).read_text())
    document["provenance"] = {"kind": "published", "source": "A paper", "table": "Table 1"}
    path.write_text(json.dumps(document))
    before = path.read_bytes()
    run = _pytest("--case-id", case.id, "-k", "density", "--update-expectations", "--expectations-dir", str(tmp_path))
    assert run.returncode == 1
    assert "holds published values; a measured run never overwrites them" in run.stdout
    assert "--replace-published" in run.stdout
    assert path.read_bytes() == before


def _gemma3_hub(tmp_path, monkeypatch, repos):
    """A hub cache holding Gemma 3 miniatures, read offline."""
    from sae_bench.sources.rehearsal.miniatures import miniature, save_miniature
    from sae_bench.sources.rehearsal.stand_ins import snapshot_dir

    for repo in repos:
        save_miniature(miniature(repo), snapshot_dir(tmp_path / "hub", repo), seed=7)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_gemma3_miniature_runs_in_transformer_lens_as_in_hf_sliding_windows_included(tmp_path, monkeypatch):
    """TransformerLens's Gemma 3 (its table's pattern, resized to the miniature) against HF's own forward, on rows
    longer than the local window; with the window ignored the two disagree, so the local layers are exercised."""
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM

    from sae_bench.engine.backends import hooked_transformer_on_purpose
    from sae_bench.sources.rehearsal import substitute_hard_coded_configs
    from sae_bench.sources.rehearsal.miniatures import GEMMA3_SLIDING_WINDOW

    repo = "google/gemma-3-270m-it"
    _gemma3_hub(tmp_path, monkeypatch, [repo])
    substitute_hard_coded_configs()
    with hooked_transformer_on_purpose():
        model = HookedTransformer.from_pretrained(repo, device="cpu", dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(repo, dtype=torch.float32)
    assert model.cfg.n_layers == 18 and model.cfg.attn_types[:6] == ["local"] * 5 + ["global"]
    assert model.cfg.window_size == GEMMA3_SLIDING_WINDOW and model.cfg.use_qk_norm
    tokens = torch.randint(110, model.cfg.d_vocab, (2, 3 * GEMMA3_SLIDING_WINDOW), generator=torch.Generator())
    tokens[:, 0] = 2  # <bos>
    reference = hf(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(model(tokens).log_softmax(-1), reference, rtol=0, atol=1e-4)
    for block in model.blocks:
        block.attn.cfg.window_size = 10 * GEMMA3_SLIDING_WINDOW
    assert (model(tokens).log_softmax(-1) - reference).abs().max() > 1e-2
    chat = model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    chat = chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat
    assert chat[:2] == [2, 105] and 106 in chat  # <bos><start_of_turn>user … <end_of_turn> … model


def test_gemma_scope_2_stand_in_loads_offline_through_saelens_gemma_3_loader(tmp_path, monkeypatch):
    """SAELens reads a Gemma Scope 2 SAE's sizes by HTTP range requests even offline; the suite reads them from the
    cached file, and the rest (config, JumpReLU weights, hook) is SAELens's own loader."""
    from safetensors.torch import load_file

    from sae_bench.sources.hub import saelens_release
    from sae_bench.sources.loading import load_sae
    from sae_bench.sources.rehearsal.stand_ins import D_SAE, write_release_sae

    body = "gemma-scope-2-270m-it-res-all/layer_9_width_16k_l0_small"
    directory = write_release_sae(tmp_path / "hub", body)
    assert directory.as_posix().endswith("resid_post_all/layer_9_width_16k_l0_small")
    assert saelens_release(body)[2] == "google/gemma-scope-2-270m-it"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae = load_sae(f"saelens:{body}")
    written = load_file(directory / "params.safetensors")
    assert sae.cfg.metadata.hook_name == "blocks.9.hook_resid_post" and sae.cfg.d_sae == D_SAE
    assert sae.cfg.metadata.model_name == "google/gemma-3-270m-it"
    assert torch.equal(sae.W_enc, written["w_enc"]) and torch.equal(sae.threshold, written["threshold"])


def test_gemma_scope_2_sweeps_expand_to_the_2x2_design_at_every_layer():
    registry = load_registry(SHIPPED_CASES)
    text = [c for c in registry if c.family == "gemma-3-270m" and c.sweep == "res-all"]
    rollouts = [c for c in registry if c.family == "gemma-3-270m" and c.sweep == "res-all-rollouts"]
    assert len(text) == 288 and len(rollouts) == 144  # 72 ids x (PT, IT) releases x (PT, IT) models; IT rollouts
    assert {c.hook for c in text} == {f"blocks.{layer}.hook_resid_post" for layer in range(18)}
    assert "gemma-3-270m/pt-res-all/layer_6_width_16k_l0_small@it" in registry.cases
    assert len([c for c in registry if c.family == "gemma-3-1b" and c.sweep == "res-all"]) == 4 * 104
