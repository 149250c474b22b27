"""Hub sources (SAELens releases, HF repos, wandb artifacts, HF datasets) and why one cannot be reached.

Spec forms:
- model: `hf:ORG/NAME` (a TransformerLens model name), or `hf:ORG/NAME?as=BASE[&vocab=N]` for a fine-tune whose
  weights are loaded into BASE's architecture (`from_pretrained(BASE, hf_model=...)`), its vocabulary cut to N rows;
- SAE: `saelens:RELEASE/ID`, `hf:ORG/REPO/FOLDER`, `wandb:ENTITY/PROJECT/ARTIFACT:VERSION`, or
  `unreleased:WHY` for a case whose SAE was never published (it skips until `--sae` supplies one);
- dataset: `hf:ORG/NAME` (a text column, streamed), `alpaca:ORG/NAME` (instructions with an empty input).
Local copies come first, so a machine that downloaded once needs no network or credentials again:
- a wandb artifact in wandb's own download folder (`$WANDB_ARTIFACT_DIR`, default `./artifacts`, as written by
  `wandb artifact get ENTITY/PROJECT/NAME:VERSION`);
- a dataset under `$SAE_BENCH_DATASETS/ORG/NAME` (e.g. `huggingface-cli download --repo-type dataset ORG/NAME
  --local-dir $SAE_BENCH_DATASETS/ORG/NAME`), read by the same `datasets.load_dataset` call;
- HF models and SAELens releases from the HF cache (`HF_HUB_OFFLINE=1` to forbid any download).
Nothing here is imported by the zoo path, and nothing touches the network until a case is actually run.
"""

from __future__ import annotations

import difflib
import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from sae_bench.cache import cache_dir
from sae_bench.engine.backends import hooked_transformer_on_purpose, remember_hf_checkpoint
from sae_bench.errors import BadInput
from sae_bench.source_spec import parse_spec


@functools.cache
def _unreachable(host: str, port: int = 443) -> str | None:
    """None when a TCP connection to host:port opens within 3 s, else why not (probed once per process)."""
    try:
        socket.create_connection((host, port), timeout=3).close()
        return None
    except OSError as err:
        return f"{host} is not reachable ({err.__class__.__name__}: {err})"


def _hf_missing(repo: str, filename: str, repo_type: str = "model") -> str | None:
    """None when `repo/filename` is in the HF cache or the hub can be reached; else the reason."""
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    if isinstance(try_to_load_from_cache(repo, filename, repo_type=repo_type), str):
        return None
    reason = _offline_or_unreachable()
    return None if reason is None else f"{reason} and {repo} is not in the HF cache"


def saelens_release(body: str) -> tuple[str, str, str, str]:
    """(release, sae id, HF repo, folder in the repo) of `RELEASE/ID`, checked against SAELens's registry."""

    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory  # noqa: PLC0415 - looked up when called: the rehearsal stands in for SAELens's registry and loaders

    release, _, sae_id = body.partition("/")
    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, directory, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BadInput(f"saelens:{body}: release {release!r} is not in SAELens's registry{hint}")
    if sae_id not in directory[release].saes_map:
        close = difflib.get_close_matches(sae_id, directory[release].saes_map, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BadInput(f"saelens:{body}: id {sae_id!r} is not in release {release!r}{hint}")
    return release, sae_id, directory[release].repo_id, directory[release].saes_map[sae_id]


RELEASE_CONFIG_FILES = {"gemma_2": "params.npz", "gemma_3": "params.safetensors", "llama_scope": "hyperparams.json"}
"""The first file SAELens's loader reads from a release's folder, by the release's loader (default: cfg.json)."""


def release_config_file(release: str) -> str:
    """What a release keeps in each SAE's folder that SAELens needs first: Gemma Scope's `params.npz`, Gemma Scope
    2's `params.safetensors` (its `config.json` is optional to SAELens), Llama Scope's `hyperparams.json`, else
    SAELens's own `cfg.json`."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory  # noqa: PLC0415 - looked up when called: the rehearsal stands in for SAELens's registry and loaders

    return RELEASE_CONFIG_FILES.get(get_pretrained_saes_directory()[release].conversion_func or "", "cfg.json")


def wandb_artifact_dir(body: str) -> Path:
    """Where `wandb artifact get ENTITY/PROJECT/NAME:VERSION` puts the artifact: `$WANDB_ARTIFACT_DIR/NAME:VERSION`
    (wandb's default folder is `./artifacts`)."""
    return Path(os.environ.get("WANDB_ARTIFACT_DIR", "artifacts")).absolute() / body.split("/")[-1]


DATASETS_ENV = "SAE_BENCH_DATASETS"


def datasets_dir() -> Path:
    """Where local dataset copies live (what `sae-bench fetch` writes): `$SAE_BENCH_DATASETS`, else the suite's
    cache folder's `datasets/`."""
    return Path(os.environ.get(DATASETS_ENV) or cache_dir() / "datasets")


def local_dataset(repo: str) -> Path | None:
    """`datasets_dir()/ORG/NAME` when that folder exists: a local copy of the dataset repo."""
    directory = datasets_dir() / repo
    return directory if directory.is_dir() else None


@dataclass(frozen=True)
class Lack:
    """One prerequisite a case lacks here: what it is (one row of the skip summary), why it is missing, how to get
    it (`fetch`: `sae-bench fetch` can), and the member of it the case needs (an SAE of a release)."""

    prerequisite: str
    why: str
    fix: str = "fetch"
    member: str = ""

    def __str__(self) -> str:
        fix = "`sae-bench fetch` downloads it" if self.fix == "fetch" else self.fix
        member = f" {self.member}" if self.member else ""
        return f"{self.prerequisite}{member}: {self.why}; {fix}"


def _offline_or_unreachable() -> str | None:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return "HF_HUB_OFFLINE is set"
    return _unreachable("huggingface.co")


def missing(spec: str, *, dataset: bool = False) -> list[Lack]:
    """Everything `spec` lacks here, each with what to do about it; empty when it can be loaded (or tried)."""
    if Path(spec).is_dir():
        return []
    parsed = parse_spec(spec)
    if parsed.scheme == "zoo":
        return []
    if dataset and parsed.scheme in ("hf", "alpaca"):
        if local_dataset(parsed.body) is not None:
            return []
        # `datasets` does not read the HF hub cache offline: only a local copy or the hub itself will do
        reason = _offline_or_unreachable()
        why = f"{reason} and there is no local copy in {datasets_dir() / parsed.body}"
        return [] if reason is None else [Lack(f"dataset {parsed.body}", why)]
    if parsed.scheme == "hf":
        repos = ["/".join(parsed.body.split("/")[:2])] + ([parsed.params["as"]] if "as" in parsed.params else [])
        reasons = [(repo, _hf_missing(repo, "config.json") and _hf_missing(repo, "cfg.json")) for repo in repos]
        return [Lack(f"HF repo {repo}", why) for repo, why in reasons if why]
    if parsed.scheme == "unreleased":
        fix = "supply one with --sae SPEC (a local SAELens folder, saelens:RELEASE/ID, hf:… or wandb:…)"
        return [Lack("an SAE that was never released", parsed.body, fix=fix)]
    if parsed.scheme == "saelens":
        release, sae_id, repo, folder = saelens_release(parsed.body)
        reason = _hf_missing(repo, f"{folder}/{release_config_file(release)}")
        return [] if reason is None else [Lack(f"SAELens release {release} ({repo})", reason, member=sae_id)]
    if parsed.scheme == "wandb":
        local = wandb_artifact_dir(parsed.body)
        if (local / "cfg.json").is_file():
            return []
        what = f"wandb artifact {parsed.body}"
        if not os.environ.get("WANDB_API_KEY") and not _netrc_has("api.wandb.ai"):
            why = f"not in {local.parent}, and downloading it needs wandb credentials"
            return [Lack(what, why, fix="set WANDB_API_KEY or run `wandb login`, then `sae-bench fetch`")]
        reason = _unreachable("api.wandb.ai")
        return [] if reason is None else [Lack(what, f"not in {local.parent} and {reason}")]
    raise BadInput(f"unknown source scheme {parsed.scheme!r} in {spec!r}")


def unreleased_reason(why: str) -> str:
    return (
        f"an SAE that was never released ({why}); supply one with --sae SPEC (a local SAELens folder, "
        "saelens:RELEASE/ID, hf:ORG/REPO/FOLDER or wandb:ENTITY/PROJECT/NAME:VERSION)"
    )


def _netrc_has(host: str) -> bool:
    path = Path.home() / ".netrc"
    return path.is_file() and host in path.read_text(errors="ignore")


# -- loading ------------------------------------------------------------------------------------------------------


def load_hub_model(spec: str, *, device: str, dtype: torch.dtype, backend: str):
    """A TransformerLens model from the hub: a TransformerBridge over the HF model (`backend="bridge"`), or a
    HookedTransformer with TransformerLens's default processing (`backend="hooked"`). `as=BASE` runs the repo's
    weights as BASE (its config and tokenizer), resized to `vocab=N` rows."""
    from transformer_lens import HookedTransformer  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    parsed = parse_spec(spec)
    if parsed.scheme != "hf":
        raise BadInput(f"model spec {spec!r}: hub models are hf:ORG/NAME[?as=BASE&vocab=N]")
    hf_model = None
    if "as" in parsed.params:
        from transformers import AutoModelForCausalLM  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        hf_model = AutoModelForCausalLM.from_pretrained(parsed.body, dtype=dtype)
        if "vocab" in parsed.params:
            hf_model.resize_token_embeddings(int(parsed.params["vocab"]))
    name = parsed.params.get("as", parsed.body)
    if backend == "bridge":
        from transformer_lens.model_bridge import TransformerBridge  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        model = TransformerBridge.boot_transformers(name, hf_model=hf_model, device=device, dtype=dtype).eval()
    else:
        with hooked_transformer_on_purpose():
            model = HookedTransformer.from_pretrained(name, hf_model=hf_model, device=device, dtype=dtype)
    remember_hf_checkpoint(model, parsed.body, int(parsed.params["vocab"]) if "vocab" in parsed.params else None)
    return model


def read_cached_safetensors_shapes() -> None:
    """SAELens sizes a Gemma Scope 2 SAE by range requests to the hub for its `params.safetensors` header, even when
    the file is in the HF cache and HF_HUB_OFFLINE is set; read the header from the cached file when there is one
    (the hub otherwise), so that a fetched release loads offline."""
    import sae_lens.loading.pretrained_sae_loaders as loaders  # noqa: PLC0415 - looked up when called: the rehearsal stands in for SAELens's registry and loaders

    original = loaders.get_safetensors_tensor_shapes
    if getattr(original, "_reads_cache", False):
        return

    def get_safetensors_tensor_shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

        cached = try_to_load_from_cache(repo_id, filename)
        if not isinstance(cached, str):
            return original(repo_id, filename)
        with safe_open(cached, framework="pt") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}

    get_safetensors_tensor_shapes._reads_cache = True  # type: ignore[attr-defined]
    loaders.get_safetensors_tensor_shapes = get_safetensors_tensor_shapes


def load_hub_sae(spec: str, *, device: str, dtype: str):
    from sae_lens import SAE  # noqa: PLC0415 - after the rehearsal's set-up: the hub libraries read their settings when imported

    parsed = parse_spec(spec)
    if parsed.scheme == "saelens":
        release, sae_id, _, _ = saelens_release(parsed.body)
        read_cached_safetensors_shapes()
        return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    if parsed.scheme == "hf":
        parts = parsed.body.split("/")
        return SAE.from_pretrained("/".join(parts[:2]), "/".join(parts[2:]), device=device, dtype=dtype)
    if parsed.scheme == "wandb":
        directory = wandb_artifact_dir(parsed.body)
        if not (directory / "cfg.json").is_file():
            import wandb

            directory = wandb.Api(timeout=30).artifact(parsed.body).download(root=str(directory))
        return SAE.load_from_disk(directory, device=device, dtype=dtype)
    if parsed.scheme == "unreleased":
        raise BadInput(f"cannot load {spec!r}: {unreleased_reason(parsed.body)}")
    raise BadInput(
        f"SAE spec {spec!r}: hub SAEs are saelens:RELEASE/ID, hf:ORG/REPO/FOLDER or wandb:ENTITY/PROJECT/NAME:V"
    )


def load_hub_rows(dataset: str, n_rows: int, context: int, tokenizer) -> torch.Tensor:
    """`n_rows` rows of BOS + `context - 1` tokens of the dataset's text stream, documents joined by EOS.

    `?sep=bos` joins them by BOS instead, as the SAELens store of 2024 did with `prepend_bos` (each document
    tokenised with BOS in front, rows cut from the stream, each row starting with BOS); `?sep=none` is that store
    with `prepend_bos = false` (SAELens 3.22 `get_batch_tokens`): documents concatenated with no separator at all
    and rows of `context` tokens with no BOS (Kutsyk's Mistral SAE was trained so); `?bos=0` drops only the
    row-start BOS. `?tokenized=1` reads a pretokenized dataset (SAELens's PretokenizeRunner layout: one row of
    token ids per record, in `input_ids` or `?column=`) as the SAELens store does when a record holds exactly a
    row: each record is one row, as it is stored (its first `context` tokens)."""
    from datasets import load_dataset

    parsed = parse_spec(dataset)
    path = local_dataset(parsed.body) or parsed.body
    stream = load_dataset(str(path), split=parsed.params.get("split", "train"), streaming=True)
    return rows_from_records(stream, dataset, n_rows, context, tokenizer)


def rows_from_records(records, dataset: str, n_rows: int, context: int, tokenizer) -> torch.Tensor:
    """The rows `load_hub_rows` cuts from a stream of the dataset's records, reading no record past the last row
    (so that `sae-bench fetch` keeps exactly the records a case reads)."""
    parsed = parse_spec(dataset)
    if parsed.params.get("tokenized", "0") not in ("0", "1"):
        raise BadInput(f"{dataset}: tokenized is 0 or 1, not {parsed.params['tokenized']!r}")
    if parsed.params.get("tokenized") == "1":
        return _pretokenized_rows(records, dataset, parsed.params.get("column", "input_ids"), n_rows, context)
    column = parsed.params.get("column", "text")
    sep = parsed.params.get("sep", "eos")
    if sep not in ("eos", "bos", "none"):
        raise BadInput(f"{dataset}: sep is eos, bos or none, not {sep!r}")
    joined = sep != "none"
    head = [tokenizer.bos_token_id] if parsed.params.get("bos", "1") != "0" and joined else []
    separator = {"eos": tokenizer.eos_token_id, "bos": tokenizer.bos_token_id, "none": None}[sep]
    if joined and separator is None:
        raise BadInput(f"{dataset}: sep={sep} needs the tokenizer's {sep.upper()} token, and it has none")
    by_bos = sep == "bos"
    buffer, rows = [], []
    for record in records:
        document = tokenizer(record[column], add_special_tokens=False)["input_ids"]
        if not joined:
            buffer.extend(document)
        else:
            buffer.extend([separator] + document if by_bos else document + [separator])
        while len(rows) < n_rows:
            # a row starts with BOS: a document's own, or one put before the rest of a document cut at a row end
            row_head = [] if by_bos and buffer[:1] == head else head
            take = context - len(row_head)
            if len(buffer) < take:
                break
            rows.append(row_head + buffer[:take])
            buffer = buffer[take:]
        if len(rows) == n_rows:
            break
    if len(rows) < n_rows:
        raise BadInput(f"{dataset} holds {len(rows)} rows of {context} tokens; the case asks for {n_rows}")
    return torch.tensor(rows, dtype=torch.long)


def _pretokenized_rows(records, dataset: str, column: str, n_rows: int, context: int) -> torch.Tensor:
    """The first `n_rows` records' token ids, each cut to `context`; a record shorter than that is refused."""
    rows = []
    for record in records:
        if column not in record:
            raise BadInput(
                f"{dataset}: its records have no {column!r} column (they have {sorted(record)}); pass ?column="
            )
        if len(record[column]) < context:
            raise BadInput(
                f"{dataset}: a record holds {len(record[column])} tokens; the case asks for rows of {context}"
            )
        rows.append(list(record[column][:context]))
        if len(rows) == n_rows:
            break
    if len(rows) < n_rows:
        raise BadInput(f"{dataset} holds {len(rows)} rows of {context} tokens; the case asks for {n_rows}")
    return torch.tensor(rows, dtype=torch.long)


def load_alpaca_instructions(dataset: str, n: int = 100, seed: int = 42) -> list[str]:
    """Kissane's instruction sample: shuffle(seed=42), the first 100 rows, those with an empty `input`."""
    from datasets import load_dataset

    repo = parse_spec(dataset).body
    rows = load_dataset(str(local_dataset(repo) or repo), split="train").shuffle(seed=seed).select(range(n))
    return [row["instruction"] for row in rows if row["input"].strip() == ""]
