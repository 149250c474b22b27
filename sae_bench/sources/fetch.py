"""`sae-bench fetch`: download what the selected hub cases load, and only that, where the suite reads it.

- models and tokenizers: the repo's top-level config, tokenizer and safetensors weights into the HF cache
  (`huggingface_hub.snapshot_download`; `.bin` weights only where a repo has no safetensors);
- SAEs: each SAELens release folder (or `hf:ORG/REPO/FOLDER`) the cases name, into the HF cache under its repo;
- wandb artifacts: into the folder the suite reads (`$WANDB_ARTIFACT_DIR/NAME:VERSION`);
- datasets: into `hub.datasets_dir()`. For text, exactly the records the cases' rows are cut from, streamed in
  order and counted by the suite's own row cutter (`hub.rows_from_records`) with each case's tokenizer; for chat
  prompts, the whole train split (Kissane's prompts are a seeded shuffle of all of it).
What is there already is left as it is and reported so; `--dry-run` lists what would be fetched, with the hub's
sizes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
from tqdm.auto import tqdm

from sae_bench.cases.registry import Case
from sae_bench.errors import BadInput
from sae_bench.source_spec import parse_spec, source_spec
from sae_bench.sources.hub import (
    _unreachable,
    datasets_dir,
    load_hub_rows,
    local_dataset,
    rows_from_records,
    saelens_release,
    wandb_artifact_dir,
)

MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
"""What a model repo holds that loading it needs: configs, tokenizer files, safetensors weights (top level only)."""
TOP_LEVEL_ONLY = ("*/*",)


@dataclass
class Download:
    """One thing to fetch: a model repo, a repo of SAE folders, a wandb artifact or a dataset (one split)."""

    kind: str
    source: str
    patterns: tuple[str, ...] = ()
    cases: set[str] = field(default_factory=set)
    readers: list[tuple[str, str, int, int]] = field(default_factory=list)
    """Datasets: (dataset spec, tokenizer repo, rows, context) of each case that reads rows from it."""
    status: str = ""
    size: int | None = None

    @property
    def what(self) -> str:
        folders = len(self.patterns) if self.kind == "sae" else 0
        return f"{self.kind} {self.source}" + (
            f" ({folders} SAE folder{'s' if folders > 1 else ''})" if folders else ""
        )


def downloads_for(cases: Iterable[Case]) -> tuple[list[Download], list[str]]:
    """What the hub cases among `cases` need, one download per source; and what cannot be fetched, with why."""
    found: dict[tuple[str, str], Download] = {}
    cannot: list[str] = []

    def need(kind: str, source: str, case: Case, pattern: str | None = None) -> Download:
        download = found.setdefault((kind, source), Download(kind, source))
        download.cases.add(case.id)
        if pattern is not None and pattern not in download.patterns:
            download.patterns += (pattern,)
        return download

    for case in cases:
        if case.tier != "hub":
            continue
        for spec in dict.fromkeys(s for s in (case.model, case.base_model) if s and source_spec(s).scheme == "hf"):
            parsed = parse_spec(spec)
            for repo in [parsed.body] + ([parsed.params["as"]] if "as" in parsed.params else []):
                need("model", repo, case)
        sae = parse_spec(case.sae) if not Path(case.sae).is_dir() else None
        if sae is None or sae.scheme == "zoo":
            pass
        elif sae.scheme == "saelens":
            _, _, repo, folder = saelens_release(sae.body)
            need("sae", repo, case, f"{folder}/*")
        elif sae.scheme == "hf":
            parts = sae.body.split("/")
            need("sae", "/".join(parts[:2]), case, "/".join(parts[2:]) + "/*")
        elif sae.scheme == "wandb":
            need("artifact", sae.body, case)
        else:
            cannot.append(f"{case.id}: its SAE cannot be fetched ({case.sae}); supply one with --sae")
        data = parse_spec(case.dataset)
        if data.scheme in ("hf", "alpaca"):
            split = data.params.get("split", "train")
            download = need("dataset", f"{data.body}:{split}", case)
            if data.scheme == "hf":
                reader = parse_spec(case.base_model or case.model)
                tokenizer = reader.params.get("as", reader.body)
                download.readers.append((case.dataset, tokenizer, max(1, case.tokens // case.context), case.context))
    order = {"model": 0, "sae": 1, "artifact": 2, "dataset": 3}  # datasets last: counting rows needs tokenizers
    return sorted(found.values(), key=lambda d: (order[d.kind], d.source)), cannot


# -- HF repos -----------------------------------------------------------------------------------------------------


def _snapshot(download: Download, *, dry_run: bool):
    from huggingface_hub import snapshot_download  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    repo_files = download.kind == "model"
    patterns = list(MODEL_FILES if repo_files else download.patterns)
    ignore = list(TOP_LEVEL_ONLY) if repo_files else None
    listing = snapshot_download(download.source, allow_patterns=patterns, ignore_patterns=ignore, dry_run=True)
    if repo_files and not any(f.filename.endswith(".safetensors") for f in listing):
        patterns.append("*.bin")  # a repo without safetensors weights
        listing = snapshot_download(download.source, allow_patterns=patterns, ignore_patterns=ignore, dry_run=True)
    missing = [f for f in listing if f.will_download]
    download.size = sum(f.file_size or 0 for f in missing)
    if not missing:
        download.status = f"already there ({len(listing)} files)"
    elif dry_run:
        download.status = f"would fetch {len(missing)} of {len(listing)} files"
    else:
        snapshot_download(download.source, allow_patterns=patterns, ignore_patterns=ignore)
        download.status = f"fetched {len(missing)} of {len(listing)} files"


# -- wandb --------------------------------------------------------------------------------------------------------


def _artifact(download: Download, *, dry_run: bool) -> None:
    directory = wandb_artifact_dir(download.source)
    if (directory / "cfg.json").is_file():
        download.status = f"already there ({directory})"
        return
    import wandb

    try:
        artifact = wandb.Api(timeout=30).artifact(download.source)
    except wandb.errors.UsageError as err:  # no credentials
        raise BadInput(f"needs wandb credentials: set WANDB_API_KEY or run `wandb login` ({err})") from None
    download.size = artifact.size
    if dry_run:
        download.status = f"would fetch into {directory}"
        return
    artifact.download(root=str(directory))
    download.status = f"fetched into {directory}"


# -- datasets -----------------------------------------------------------------------------------------------------


def hub_records(repo: str, split: str) -> Iterator[dict]:
    """The dataset's records as the hub streams them."""
    from datasets import load_dataset

    return iter(load_dataset(repo, split=split, streaming=True))


def records_read(records: Iterable[dict], readers, tokenizer_for: Callable[[str], object]) -> list[dict]:
    """The leading records that every reader's rows are cut from (the longest reader decides)."""
    taken: list[dict] = []
    source = iter(records)

    def replay() -> Iterator[dict]:
        yield from taken
        for record in source:
            taken.append(record)
            yield record

    consumed = 0
    for spec, tokenizer, rows, context in readers:
        counter = _Counting(replay())
        rows_from_records(counter, spec, rows, context, tokenizer_for(tokenizer))
        consumed = max(consumed, counter.count)
    return taken[:consumed]


class _Counting:
    def __init__(self, records: Iterator[dict]):
        self.records, self.count = records, 0

    def __iter__(self):
        for record in self.records:
            self.count += 1
            yield record


def local_copy(repo: str, split: str) -> Path:
    """Where the local copy of one split of a dataset lives (the layout `datasets` reads a folder of parquet by)."""
    return datasets_dir() / repo / "data" / f"{split}-00000-of-00001.parquet"


def _dataset(download: Download, *, dry_run: bool, tokenizer_for: Callable[[str], object], records=hub_records) -> None:

    repo, _, split = download.source.rpartition(":")
    target = local_copy(repo, split)
    there = local_dataset(repo)
    if there is not None:
        try:
            enough = _enough(download, tokenizer_for, load_hub_rows)
        except OSError:  # a dry run before the tokenizer is fetched
            download.status = f"a copy is in {there}; whether it holds enough records is known once the model is"
            return
        if enough:
            download.status = f"already there ({there})"
            return
    if dry_run:
        what = f"the records {len(download.readers)} cases read" if download.readers else "the whole split"
        download.status = f"would stream {what} into {target.parent.parent}"
        return
    if download.readers:
        kept = records_read(records(repo, split), download.readers, tokenizer_for)
        columns = sorted({parse_spec(spec).params.get("column", "text") for spec, *_ in download.readers})
        frame = pd.DataFrame([{c: r[c] for c in columns} for r in kept], columns=columns)
    else:  # chat prompts: a seeded shuffle of the whole split
        frame = pd.DataFrame(list(records(repo, split)))
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(target, index=False)
    download.size = target.stat().st_size
    download.status = f"wrote {len(frame)} records into {target.parent.parent}"


def _enough(download: Download, tokenizer_for, load_hub_rows) -> bool:
    """Whether the local copy already holds every reader's rows."""
    for spec, tokenizer, rows, context in download.readers:
        try:
            load_hub_rows(spec, rows, context, tokenizer_for(tokenizer))
        except BadInput:
            return False
    return True


# -- the command --------------------------------------------------------------------------------------------------


def fetch(cases: Iterable[Case], *, dry_run: bool = False, tokenizer_for=None, records=hub_records):
    """Fetch (or with `dry_run`, list) what the hub cases need; returns the downloads with their status and the
    problems (things that could not be fetched, with why)."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        raise BadInput("HF_HUB_OFFLINE is set: fetch downloads from the hub; unset it to fetch")

    from huggingface_hub import constants  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    endpoint = urlsplit(constants.ENDPOINT)
    default_port = 443 if endpoint.scheme == "https" else 80
    unreachable = _unreachable(endpoint.hostname or "", endpoint.port or default_port)
    if unreachable:
        raise BadInput(f"fetch downloads from the hub ({constants.ENDPOINT}), and {unreachable}")

    downloads, problems = downloads_for(cases)
    tokenizer_for = tokenizer_for or _tokenizer_loader()
    for download in tqdm(downloads, desc="fetch", unit="source", disable=len(downloads) < 2):
        try:
            if download.kind in ("model", "sae"):
                _snapshot(download, dry_run=dry_run)
            elif download.kind == "artifact":
                _artifact(download, dry_run=dry_run)
            else:
                _dataset(download, dry_run=dry_run, tokenizer_for=tokenizer_for, records=records)
        except BadInput as err:
            download.status = f"not fetched: {err}"
            problems.append(f"{download.what}: {err}")
        except Exception as err:  # gated or missing repos, network failures: said per source, the rest goes on
            why = f"{err.__class__.__name__}: {(str(err).splitlines() or [''])[0]}"
            download.status = f"not fetched: {why}"
            problems.append(f"{download.what}: {why}")
    return downloads, problems


def _tokenizer_loader() -> Callable[[str], object]:

    @cache
    def tokenizer_for(repo: str):
        from transformers import AutoTokenizer  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        return AutoTokenizer.from_pretrained(repo)

    return tokenizer_for


def human_size(size: int | None) -> str:
    if size is None:
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
