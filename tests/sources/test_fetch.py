"""`sae-bench fetch` against a local stand-in of the HF hub (127.0.0.1, `tests/hub_server.py`) serving the
rehearsal's miniatures: it lists with sizes, fetches only what the selected cases load, leaves what is there, and
the fetched model and SAE then load with the hub offline. Dataset records: exactly those the cases' rows are cut
from, counted by the suite's own row cutter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_bench.cases.registry import SHIPPED_CASES, load_registry

CASE = "gemma-3-270m/pt-res-all/layer_9_width_16k_l0_small@it"
SAE_REPO = "google/gemma-scope-2-270m-pt"


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The hub's side: the case's two model repos (plus a file no load needs) and its SAE repo with a second SAE
    folder that the case does not name."""
    from sae_bench.sources.rehearsal.miniatures import miniature, save_miniature
    from sae_bench.sources.rehearsal.stand_ins import snapshot_dir, write_release_sae

    root = tmp_path_factory.mktemp("remote")
    repos = {}
    for repo in ("google/gemma-3-270m", "google/gemma-3-270m-it"):
        folder = snapshot_dir(root, repo)
        save_miniature(miniature(repo), folder, seed=3)
        (folder / "original").mkdir()
        (folder / "original" / "consolidated.pth").write_bytes(b"\0" * 1000)  # not something a load reads
        repos[repo] = folder
    for sae_id in ("layer_9_width_16k_l0_small", "layer_3_width_16k_l0_big"):
        write_release_sae(root, f"gemma-scope-2-270m-pt-res-all/{sae_id}")
    repos[SAE_REPO] = snapshot_dir(root, SAE_REPO)
    return repos


def _fetch(endpoint: str, cache: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI against the local hub, with the rehearsal's copy of the case's dataset in place (datasets are not
    served by the local hub: their fetch is tested below)."""
    from sae_bench.sources.rehearsal.stand_ins import write_dataset

    if not (cache.parent / "data" / "monology").is_dir():
        write_dataset(cache.parent / "data", "monology/pile-uncopyrighted")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HF_"))}
    env |= {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "SAE_BENCH_DATASETS": str(cache.parent / "data")}
    command = [sys.executable, "-m", "sae_bench.cli", "fetch", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.full
def test_fetch_lists_then_fetches_only_what_the_case_loads_then_leaves_it(remote, tmp_path, monkeypatch):
    from tests.hub_server import local_hub

    cache = tmp_path / "hub"
    with local_hub(remote) as (endpoint, requests):
        listed = _fetch(endpoint, cache, "--case-id", CASE, "--dry-run")
        assert "would fetch" in listed.stdout and "1 SAE folder" in listed.stdout, listed.stdout + listed.stderr
        assert not cache.exists() or not any(cache.rglob("*.safetensors"))  # a dry run fetches nothing
        assert "kB" in listed.stdout  # the hub's sizes
        fetched = _fetch(endpoint, cache, "--case-id", CASE)
        assert "fetched" in fetched.stdout, fetched.stdout + fetched.stderr
        before = len(requests)
        again = _fetch(endpoint, cache, "--case-id", CASE)
        downloads_again = [r for r in requests[before:] if r.startswith("GET") and "/resolve/" in r]
    got = sorted(p.relative_to(cache).as_posix().split("/snapshots/")[-1] for p in cache.rglob("*") if p.is_file())
    assert any(name.endswith("resid_post_all/layer_9_width_16k_l0_small/params.safetensors") for name in got)
    assert not any("layer_3_width_16k_l0_big" in name or name.startswith("original") for name in got)
    weights = [str(p) for p in cache.rglob("model.safetensors")]
    assert len(weights) == 1 and "models--google--gemma-3-270m-it" in weights[0]  # the case's model only
    rows = [line for line in again.stdout.splitlines() if line.startswith(("| model", "| sae", "| dataset"))]
    assert len(rows) == 3 and all("already there" in line for line in rows), again.stdout
    assert downloads_again == []

    # what was fetched loads with the hub offline, through the suite's loaders
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sae_bench.sources.loading import load_sae

    case = load_registry(SHIPPED_CASES).get(CASE)
    assert load_sae(case.sae).cfg.metadata.hook_name == case.hook


@pytest.mark.full
def test_fetch_says_what_it_cannot_fetch_and_how(tmp_path):
    from tests.hub_server import local_hub

    with local_hub({}) as (endpoint, _):
        run = _fetch(endpoint, tmp_path / "hub", "-k", "mistral-7b/base-sae@base")
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert "not fetched: model mistralai/Mistral-7B-v0.1" in run.stderr  # not on this hub
        assert "WANDB_API_KEY" in run.stderr  # Kissane's SAE is a wandb artifact
        none = _fetch(endpoint, tmp_path / "hub")
        assert none.returncode == 2 and "-k EXPR" in none.stderr


def test_dataset_records_fetched_are_exactly_those_the_rows_are_cut_from(tmp_path, monkeypatch):
    from sae_bench.sources.fetch import Download, _dataset, local_copy
    from sae_bench.sources.hub import load_hub_rows, rows_from_records
    from sae_bench.sources.rehearsal.miniatures import MINIATURES, build_tokenizer, training_texts

    monkeypatch.setenv("SAE_BENCH_DATASETS", str(tmp_path))
    tokenizer = build_tokenizer(MINIATURES["google/gemma-3-270m"].tokenizer)
    hub = [{"text": text, "meta": {"i": i}} for i, text in enumerate(training_texts())]
    spec, rows, context = "hf:monology/pile-uncopyrighted", 6, 64
    download = Download("dataset", "monology/pile-uncopyrighted:train")
    download.readers = [(spec, "tok", rows, context), (f"{spec}?sep=bos", "tok", 2, 128)]
    _dataset(download, dry_run=False, tokenizer_for=lambda _: tokenizer, records=lambda repo, split: iter(hub))

    kept = local_copy("monology/pile-uncopyrighted", "train")
    import pandas as pd

    frame = pd.read_parquet(kept)
    assert 0 < len(frame) < len(hub) and list(frame.text) == [r["text"] for r in hub[: len(frame)]]
    for reader, n, width in ((spec, rows, context), (f"{spec}?sep=bos", 2, 128)):
        expected = rows_from_records(iter(hub), reader, n, width, tokenizer)
        assert torch.equal(load_hub_rows(reader, n, width, tokenizer), expected)
    longest = max(download.readers, key=lambda reader: _records_for(hub, tokenizer, *reader))
    with pytest.raises(Exception, match="holds"):  # one record fewer would not do: the copy is exactly enough
        rows_from_records(iter(hub[: len(frame) - 1]), longest[0], longest[2], longest[3], tokenizer)
    _dataset(download, dry_run=False, tokenizer_for=lambda _: tokenizer, records=lambda *_: pytest.fail("refetched"))
    assert download.status.startswith("already there")


def _records_for(hub, tokenizer, spec, _, rows, context) -> int:
    from sae_bench.sources.fetch import records_read

    return len(records_read(iter(hub), [(spec, "tok", rows, context)], lambda _: tokenizer))


def test_a_pretokenized_dataset_is_read_one_stored_row_per_record():
    """`?tokenized=1` (SAELens's PretokenizeRunner layout, e.g. ctigges/openwebtext-gemma-1024-cl): each record's
    `input_ids` is one row as stored, cut to the context; anything else is one message."""
    from sae_bench.errors import BadInput
    from sae_bench.sources.hub import rows_from_records

    records = [{"input_ids": list(range(10 * i, 10 * i + 8))} for i in range(5)]
    rows = rows_from_records(iter(records), "hf:org/set?tokenized=1", 3, 6, tokenizer=None)
    assert rows.tolist() == [list(range(10 * i, 10 * i + 6)) for i in range(3)]
    assert rows_from_records(iter(records), "hf:org/set?tokenized=1", 5, 8, None).shape == (5, 8)
    with pytest.raises(BadInput, match="a record holds 8 tokens; the case asks for rows of 9"):
        rows_from_records(iter(records), "hf:org/set?tokenized=1", 2, 9, None)
    with pytest.raises(BadInput, match="holds 5 rows of 8 tokens; the case asks for 6"):
        rows_from_records(iter(records), "hf:org/set?tokenized=1", 6, 8, None)
    with pytest.raises(BadInput, match="no 'tokens' column .*pass \\?column="):
        rows_from_records(iter(records), "hf:org/set?tokenized=1&column=tokens", 2, 8, None)
    with pytest.raises(BadInput, match="tokenized is 0 or 1, not 'yes'"):
        rows_from_records(iter(records), "hf:org/set?tokenized=yes", 2, 8, None)
