"""The case registry: what a benchmark case is, and how case files (`benchmarks/cases/*.toml`) are read and checked.

A case file describes one family: its SAEs and models as source specs, defaults, and cases (single `[[case]]`
entries or `[[grid]]` entries that expand to every SAE × model). Case ids read
`FAMILY/SAE@MODEL[/MASK][/VARIANT]`, or `FAMILY/SAE@BASE-vs-MODEL[/…]` for paired cases, so `pytest -k` selects
naturally. Any malformed entry raises `CaseFileError` naming the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
import string
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from sae_bench.cases.claims import read_claims
from sae_bench.cases.selection import Selection
from sae_bench.errors import BadInput, CaseFileError
from sae_bench.precision import DEFAULT_DTYPE, OVERFLOW_RULES, dtype_problem
from sae_bench.shipped import shipped
from sae_bench.source_spec import source_spec
from sae_bench.sources.zoo.recipes import release_ids

METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "reconstruction": (
        "l0",
        "mse",
        "explained_variance",
        "explained_variance_per_token",
        "explained_variance_flattened",
    ),
    "ce": (
        "ce_clean",
        "ce_spliced",
        "ce_zero_ablation",
        "ce_delta",
        "ce_loss_recovered",
        "ce_loss_recovered_batch_mean",
    ),
    "kl": ("kl_spliced", "kl_zero", "kl_score"),
    "density": ("dead_fraction",),
    "outliers": (
        "outlier_fraction",
        "outlier_share_bos",
        "outlier_share_early_position",
        "outlier_share_newline",
        "outlier_share_other",
    ),
    "universality": (
        "dead_fraction_base",
        "dead_fraction_finetuned",
        "log_density_correlation",
        "activation_similarity_regular_mean",
        "logit_similarity_regular_mean",
        "dead_activation_error_dead_in_base_only_mean",
        "dead_activation_error_dead_in_finetuned_only_mean",
    ),
    "residual": ("residual_cosine", "residual_distance"),
    "reconstruction-pooled": ("explained_variance_per_token_pooled",),
}
"""Metrics checked per test item: one item per (case, group), so a failure names what regressed."""

SHIPPED_CASES = shipped("cases")
"""The suite's own case files (the checkout's, or the installed copy)."""
TRANSFER_GROUPS = ("reconstruction", "ce", "kl", "density", "outliers", "reconstruction-pooled")
PAIRED_GROUPS = ("universality", "residual")
CHAT_MASKS = ("rollout", "user-prompt")
"""Masks over chat rows (prompt + rollout); the others are over text rows."""
MASKS = ("all", "all-but-first", *CHAT_MASKS)
"""`all-but-first` drops position 0 of every row (Kutsyk's exclude_bos)."""
NORMS = ("scaled", "raw", "mean-norm")
_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


class ModelKey(NamedTuple):
    """A model as a run loads it: its source spec and the dtype it runs in (two dtypes are two models)."""

    spec: str
    dtype: str = DEFAULT_DTYPE

    def __str__(self) -> str:
        return f"{self.spec} [{self.dtype}]"


@dataclass(frozen=True)
class OutlierSetting:
    """Which positions count as outliers: norm above `threshold`, on scaled or raw norms, or as a multiple of the
    evaluated model's mean norm at the hook (`mean-norm`); outliers stay un-spliced, and are scored in CE/KL when
    `count_in_ce`."""

    threshold: float
    norm: str = "scaled"
    count_in_ce: bool = True


@dataclass(frozen=True)
class Case:
    """One (SAE, model) benchmark case and every setting its numbers depend on."""

    id: str
    family: str
    file: str
    sae_name: str
    sae: str  # source spec
    model_name: str
    model: str  # source spec
    hook: str
    dataset: str
    tokens: int
    context: int
    groups: tuple[str, ...]
    base_model_name: str | None = None
    base_model: str | None = None  # paired cases: the model the SAE is compared across
    mask: str = "all"
    variant: str = ""
    outliers: OutlierSetting | None = None
    scaling_factor: float | None = None
    scaling_factor_source: str = "none"
    exclude_special_tokens: bool = False
    batch_size: int = 8
    gpu: bool = False
    slow: bool = False
    description: str = ""
    conventions: Mapping[str, Any] = field(default_factory=dict)  # how the published numbers were computed
    drop_first_token: bool = False
    """Rows lose their first token before any model runs (Kutsyk's exclude_bos on a BOS-prepending store): a
    token-set transform, not a mask."""
    bands_from_full_rows: bool = False
    """A universality case with `drop_first_token`: the density bands (regular, dead in one model only) and the dead
    fractions come from a pass over the full rows, first token included, as Kutsyk's 4_sae_eval computed the
    densities that 5_features_transfer then read; the similarities still come from the cut rows."""
    sweep: str = ""
    """The sweep this case was expanded from (its expectations live in the sweep's file for its model)."""
    hook_mismatch_ok: str = ""
    """Why the SAE may be spliced at another hook than its config names (empty: it may not)."""
    dtype: str = DEFAULT_DTYPE
    """The precision the model(s) run in (`sae_bench.precision`); the SAE runs in float32 whatever it is."""
    dtype_source: str = ""
    """Why this dtype: the study's code or the release's documentation that runs the model in it."""
    overflow: str = OVERFLOW_RULES[0]
    """What a batch whose scores overflowed (inf or NaN) does to its metrics (`precision.OVERFLOW_RULES`)."""
    overflow_source: str = ""
    """The code whose rule `overflow` follows, when it is not the default."""
    token_classes: bool = False
    """Also measure every metric per token class (`M_by_class[CLASS]`): set when a claim of its family reads one."""

    @property
    def model_key(self) -> ModelKey:
        return ModelKey(self.model, self.dtype)

    @property
    def base_model_key(self) -> ModelKey | None:
        return None if self.base_model is None else ModelKey(self.base_model, self.dtype)

    @property
    def model_keys(self) -> tuple[ModelKey, ...]:
        """The models the case runs: the base model first (paired cases), then the model."""
        return tuple(k for k in (self.base_model_key, self.model_key) if k is not None)

    @property
    def tier(self) -> str:
        specs = [self.sae, self.model] + ([self.base_model] if self.base_model else [])
        return "zoo" if all(source_spec(s).tier == "zoo" for s in specs) else "hub"

    @property
    def paired(self) -> bool:
        return self.base_model is not None

    def expectation_path(self, root: Path) -> Path:
        """Its own file; a sweep's case shares one file per sweep and model (`expectations.read_bundle`)."""
        if self.sweep:
            return root / self.family / f"{self.sweep}@{self.model_name}.json"
        return expectation_path(root, self.id)

    def metrics(self, group: str) -> tuple[str, ...]:
        return METRIC_GROUPS[group]


def expectation_path(root: Path, case_id: str) -> Path:
    """expectations/FAMILY/REST.json, the id's later slashes written as dots."""
    family, rest = case_id.split("/", 1)
    return root / family / f"{rest.replace('/', '.')}.json"


def case_id(family: str, sae: str, model: str, base: str | None, mask: str, variant: str) -> str:
    target = f"{base}-vs-{model}" if base else model
    parts = [f"{family}/{sae}@{target}"] + ([mask] if mask != "all" else []) + ([variant] if variant else [])
    return "/".join(parts)


_CASE_KEYS = {f.name for f in fields(Case)} - {"id", "family", "file", "sae_name", "model_name", "base_model_name"}
_SWEEP_KEYS = {"name", "releases", "models", "hook", "layers", "widths", "ids", "variants", "margins", "margin_basis"}
"""A sweep's own keys; the others are case fields of every case it expands to. Margins serve the paired release gate."""
_LAYER = re.compile(r"layer_(\d+)")
HOOK_PLACEHOLDERS = ("layer",)
"""What a sweep's hook template may name: `{layer}`, read off each release id."""
JUDGED = {"ce_spliced": "lower", "kl_spliced": "lower", "explained_variance": "higher"}
"""The metrics the paired release gate judges (a sweep's `margins` name some of them), and which way is better."""
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


@dataclass(frozen=True)
class Sweep:
    """A `[[sweep]]` declaration: releases × the family's models, its hook template and the paired gate's margins."""

    family: str
    name: str
    file: str
    hook: str
    """The hook template, `{layer}` read off each release id."""
    margins: Mapping[str, float | str]
    """Per judged metric: an absolute margin (finite, positive), or "N%" of the old SAE's own value (0 < N <= 100)."""
    margin_basis: str = ""
    hook_mismatch_ok: str = ""
    """Why a release's SAE may be spliced at another hook than its config names (empty: it may not)."""

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"

    def hook_at(self, layer: int) -> str:
        return self.hook.format(layer=layer)


def margin_problem(metric: str, value: Any) -> str | None:
    """Why `value` is not a margin of the paired gate for `metric` (None: it is one)."""
    if metric not in JUDGED:
        return f"{metric!r} is not a judged metric ({', '.join(JUDGED)})"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return f"{metric} = {value!r} is not a number or a percentage"
    if isinstance(value, str):
        match = _PERCENT.fullmatch(value)
        if match is None or not 0 < float(match.group(1)) <= 100:
            return f'{metric} = {value!r} is not a percentage "N%" with 0 < N <= 100'
        return None
    if not math.isfinite(value) or value <= 0:
        return f"{metric} = {value!r} is not a finite positive number"
    return None


class _IdFilter:
    """A sweep's filters over release ids: `layers = [first, last]`, `widths = ["16k", …]`, `ids = "regex"`."""

    def __init__(self, path: Path, where: str, sweep: Mapping[str, Any]):
        self.path, self.where = path, where
        layers = sweep.get("layers")
        if layers is not None and not (
            isinstance(layers, list) and len(layers) == 2 and all(isinstance(x, int) for x in layers)
        ):
            raise CaseFileError(path, f"{where}.layers", f"expected [first, last], got {layers!r}", "layers = [0, 9]")
        self.layers = layers
        self.widths = sweep.get("widths")
        if self.widths is not None and not (
            isinstance(self.widths, list) and self.widths and all(isinstance(w, str) and w for w in self.widths)
        ):
            raise CaseFileError(
                path, f"{where}.widths", f"expected a list of widths, got {self.widths!r}", 'widths = ["16k", "65k"]'
            )
        try:
            if "ids" in sweep and not isinstance(sweep["ids"], str):
                raise TypeError(f"expected a string, got {sweep['ids']!r}")
            self.pattern = re.compile(sweep["ids"]) if "ids" in sweep else None
        except (re.error, TypeError) as err:
            raise CaseFileError(
                path, f"{where}.ids", f"not a regular expression ({err})", 'ids = "layer_.*_16k"'
            ) from None

    def layer_of(self, sae_id: str) -> int:
        match = _LAYER.search(sae_id)
        if match is None:
            raise CaseFileError(
                self.path, self.where, f"release id {sae_id!r} names no layer_N", "filter it out with ids = …"
            )
        return int(match.group(1))

    def checks(self, sae_id: str, layer: int) -> dict[str, bool]:
        """Each declared filter (as the file writes it) and whether it keeps this id."""
        kept = {}
        if self.layers is not None:
            kept[f"layers = {self.layers}"] = self.layers[0] <= layer <= self.layers[1]
        if self.widths is not None:
            kept[f"widths = {self.widths}"] = any(f"width_{w}" in sae_id for w in self.widths)
        if self.pattern is not None:
            kept[f"ids = {self.pattern.pattern!r}"] = self.pattern.fullmatch(sae_id) is not None
        return kept

    def __call__(self, sae_id: str, layer: int) -> bool:
        return all(self.checks(sae_id, layer).values())

    def nothing_kept(self, label: str, checks: list[dict[str, bool]]) -> CaseFileError:
        """The error for a release none of whose ids passes the filters, naming the ones that keep nothing."""
        empty = [name for name in (checks[0] if checks else {}) if not any(c[name] for c in checks)]
        which = "; ".join(empty) if empty else "the filters together"
        return CaseFileError(
            self.path,
            self.where,
            f"{which} keeps none of release {label}'s {len(checks)} ids",
            "widen the filter (`sae-bench cases --sweep …` lists what a sweep expands to), or drop it",
        )


def release_members(source: str, base: Path, where: str) -> list[tuple[str, str]]:
    """(id, SAE spec) of every SAE of a release: `saelens:RELEASE` (ids from SAELens's own registry),
    `zoo:FAMILY/RELEASE` (the zoo's), or a folder with one SAE folder per id (relative to the case file)."""
    spec = source_spec(source)
    if spec.scheme == "saelens":
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory  # noqa: PLC0415 - SAELens loads torch, and this module stays light (sae-bench cases, the rehearsal's set-up)

        release = spec.body
        directory = get_pretrained_saes_directory()
        if release not in directory:
            close = difflib.get_close_matches(release, directory, n=3)
            raise BadInput(f"{where}: {release!r} is not in SAELens's registry; close: {', '.join(close) or 'none'}")
        return [(sae_id, f"saelens:{release}/{sae_id}") for sae_id in directory[release].saes_map]
    if spec.scheme == "zoo":
        family, _, release = spec.body.partition("/")
        ids = release_ids(family, release)
        if not ids:
            raise BadInput(f"{where}: no zoo release {source!r} (`sae-bench zoo list` shows the zoo's SAEs)")
        return [(sae_id, f"{source}/{sae_id}") for sae_id in ids]
    folder = (base / source).resolve()
    members = sorted(p for p in folder.iterdir() if (p / "cfg.json").is_file()) if folder.is_dir() else []
    if not members:
        raise BadInput(f"{where}: {source} is not a folder of SAE folders (each with cfg.json), nor saelens:/zoo:")
    return [(p.name, str(p)) for p in members]


_ENTRY_KEYS = (_CASE_KEYS - {"sae", "model", "base_model"}) | {"sae", "model", "base", "saes", "models"}
_MARGINS_FIX = (
    'margins = { ce_spliced = 0.05, kl_spliced = "30%", explained_variance = 0.03 } (each a finite positive number, '
    'or a percentage "N%" of the old SAE\'s value with 0 < N <= 100)'
)


class _Reader:
    """Turns one parsed case file into cases, checking every field on the way."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path, self.data = path, data
        self.family = self._string(data, "family", "the top level")
        self.saes = self._table("saes")
        self.models = self._table("models")
        self.defaults = data.get("defaults", {})
        self.sweeps: dict[str, Sweep] = {}
        unknown = set(data) - {"family", "description", "saes", "models", "defaults", "case", "grid", "sweep", "claim"}
        if unknown:
            raise CaseFileError(
                path,
                "top level",
                f"unknown keys {sorted(unknown)}",
                "use family, description, saes, models, defaults, case, grid, sweep and claim",
            )

    def _string(self, table: Mapping[str, Any], key: str, where: str) -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value:
            raise CaseFileError(
                self.path, f"{where}.{key}", f"expected a non-empty string, got {value!r}", f'set {key} = "…"'
            )
        return value

    def _table(self, key: str) -> dict[str, str]:
        table = self.data.get(key)
        if key == "saes" and table is None and self.data.get("sweep"):
            return {}  # a family of sweeps only: its SAEs come from the releases
        if not isinstance(table, dict) or not table:
            raise CaseFileError(self.path, key, "missing or empty", f'add a [{key}] table of name = "source spec"')
        for name, spec in table.items():
            if not _NAME.match(name) or not isinstance(spec, str):
                raise CaseFileError(
                    self.path,
                    f"{key}.{name}",
                    "names are lowercase words and specs strings",
                    f'write {key}.{name.lower()} = "zoo:…" (or hf:, saelens:, wandb:)',
                )
        return table

    def _lookup(self, kind: str, name: Any, where: str) -> str:
        table = self.saes if kind == "sae" else self.models
        if name not in table:
            close = difflib.get_close_matches(str(name), table, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(table)}"
            raise CaseFileError(self.path, f"{where}.{kind}", f"{name!r} is not in [{kind}s]", hint)
        return table[name]

    def entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for index, entry in enumerate(self._tables("case")):
            yield f"case[{index}]", entry
        for index, grid in enumerate(self._tables("grid")):
            where = f"grid[{index}]"
            for key in ("saes", "models"):
                if not isinstance(grid.get(key), list) or not grid[key]:
                    raise CaseFileError(self.path, f"{where}.{key}", "expected a non-empty list", f'{key} = ["…", "…"]')
            variants = self._variants(grid, where)
            for sae, model, variant in itertools.product(grid["saes"], grid["models"], variants):
                rest = {k: v for k, v in grid.items() if k not in ("saes", "models", "variants")}
                yield where, rest | {"sae": sae, "model": model} | variant
        for index, sweep in enumerate(self._tables("sweep")):
            yield from self._sweep_entries(f"sweep[{index}]", sweep)

    def _tables(self, key: str) -> list[dict[str, Any]]:
        """`[[case]]`, `[[grid]]` or `[[sweep]]` entries: an array of tables, nothing else."""
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
            raise CaseFileError(self.path, key, f"expected [[{key}]] tables, got {value!r}", f"write [[{key}]] entries")
        return value

    def _variants(self, entry: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
        variants = entry.get("variants", [{}])
        if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
            raise CaseFileError(
                self.path,
                f"{where}.variants",
                f"expected a list of tables, got {variants!r}",
                'variants = [{ mask = "rollout" }, { variant = "filtered", outliers = { … } }]',
            )
        return variants

    def _hook_template(self, sweep: Mapping[str, Any], where: str) -> str:
        """The sweep's hook template, its placeholders checked against the ones a release id gives."""
        template = self._string(sweep, "hook", where)
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as err:
            raise CaseFileError(
                self.path, f"{where}.hook", f"not a template ({err})", 'hook = "blocks.{layer}.hook_resid_post"'
            ) from None
        unknown = sorted(set(names) - set(HOOK_PLACEHOLDERS))
        if unknown or "" in names:
            raise CaseFileError(
                self.path,
                f"{where}.hook",
                f"unknown placeholder {{{(unknown or [''])[0]}}} in {template!r}",
                f"the known placeholders: {', '.join('{' + p + '}' for p in HOOK_PLACEHOLDERS)}",
            )
        return template

    def sweep(self, where: str, declaration: Mapping[str, Any]) -> Sweep:
        """The declaration of one `[[sweep]]`, each of its own fields checked."""
        name = self._string(declaration, "name", where)
        if not _NAME.match(name):
            raise CaseFileError(
                self.path,
                f"{where}.name",
                f"{name!r} is not a sweep name (lowercase letters, digits, '.' and '-'; it names expectation files)",
                'name = "res-all"',
            )
        if name in self.sweeps:
            raise CaseFileError(self.path, f"{where}.name", f"sweep {name!r} is declared twice", "rename one of them")
        margins = declaration.get("margins", {})
        if not isinstance(margins, dict):
            raise CaseFileError(self.path, f"{where}.margins", f"expected a table, got {margins!r}", _MARGINS_FIX)
        for metric, value in margins.items():
            if problem := margin_problem(metric, value):
                raise CaseFileError(self.path, f"{where}.margins", problem, _MARGINS_FIX)
        for key in ("margin_basis", "hook_mismatch_ok"):
            if not isinstance(declaration.get(key, ""), str):
                raise CaseFileError(
                    self.path, f"{where}.{key}", f"expected a string, got {declaration[key]!r}", f'{key} = "why"'
                )
        hook_mismatch_ok = declaration.get("hook_mismatch_ok", self.defaults.get("hook_mismatch_ok", ""))
        return Sweep(
            self.family,
            name,
            str(self.path),
            self._hook_template(declaration, where),
            {metric: float(v) if not isinstance(v, str) else v for metric, v in margins.items()},
            declaration.get("margin_basis", ""),
            hook_mismatch_ok if isinstance(hook_mismatch_ok, str) else "",
        )

    def _sweep_entries(self, where: str, declaration: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """A release × the family's models, as ordinary entries: each id's SAE joins [saes] as RELEASE/ID, its hook
        from the sweep's template (`{layer}` read off the id), filtered by layers, widths and an id pattern."""
        sweep = self.sweep(where, declaration)
        self.sweeps[sweep.name] = sweep
        releases = declaration.get("releases")
        if not isinstance(releases, dict) or not releases:
            raise CaseFileError(self.path, f"{where}.releases", "missing", 'releases = { pt = "saelens:…" }')
        models = declaration.get("models")
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            raise CaseFileError(self.path, f"{where}.models", "expected a non-empty list", 'models = ["base", "it"]')
        keep = _IdFilter(self.path, where, declaration)
        variants = self._variants(declaration, where)
        rest = {k: v for k, v in declaration.items() if k not in _SWEEP_KEYS}
        for label, source in releases.items():
            if not _NAME.match(label) or not isinstance(source, str):
                raise CaseFileError(
                    self.path, f"{where}.releases.{label}", "labels are lowercase words, sources strings", "pt = …"
                )
            checks = []
            for sae_id, spec in release_members(source, self.path.parent, f"{self.path}: {where}.releases.{label}"):
                layer = keep.layer_of(sae_id)
                checks.append(keep.checks(sae_id, layer))
                if not keep(sae_id, layer):
                    continue
                sae_name = f"{label}/{sae_id}"
                self.saes[sae_name] = spec
                for model, variant in itertools.product(models, variants):
                    entry = {"sae": sae_name, "model": model, "hook": sweep.hook_at(layer), "sweep": sweep.name}
                    yield where, rest | entry | variant
            if not any(all(c.values()) for c in checks):
                raise keep.nothing_kept(label, checks)

    def case(self, where: str, entry: dict[str, Any]) -> Case:
        merged = dict(self.defaults) | entry
        unknown = set(merged) - _ENTRY_KEYS
        if unknown:
            close = {k: difflib.get_close_matches(k, _ENTRY_KEYS, n=1) for k in unknown}
            hints = ", ".join(f"{k} → {c[0]}" for k, c in close.items() if c) or f"allowed: {sorted(_ENTRY_KEYS)}"
            raise CaseFileError(self.path, where, f"unknown fields {sorted(unknown)}", hints)
        for key in ("hook", "dataset", "tokens", "context", "groups"):
            if key not in merged:
                raise CaseFileError(self.path, f"{where}.{key}", "missing", f"set {key} in the entry or in [defaults]")
        sae_name, model_name = merged.pop("sae"), merged.pop("model")
        base_name = merged.pop("base", None)
        settings: dict[str, Any] = {
            "sae": self._lookup("sae", sae_name, where),
            "model": self._lookup("model", model_name, where),
            "base_model": None if base_name is None else self._lookup("model", base_name, where),
        }
        for key, value in merged.items():
            settings[key] = self._field(where, key, value)
        groups = settings["groups"]
        allowed = PAIRED_GROUPS if base_name else TRANSFER_GROUPS
        if not set(groups) <= set(allowed):
            raise CaseFileError(
                self.path,
                f"{where}.groups",
                f"{sorted(set(groups) - set(allowed))} do not apply to a {'paired' if base_name else 'transfer'} case",
                f"choose from {list(allowed)}",
            )
        if settings.get("bands_from_full_rows") and not (settings.get("drop_first_token") and "universality" in groups):
            raise CaseFileError(
                self.path,
                f"{where}.bands_from_full_rows",
                "applies to a universality case whose rows lose their first token; without drop_first_token the "
                "bands already come from the full rows",
                'set drop_first_token = true and groups = ["universality"], or drop bands_from_full_rows',
            )
        if settings.get("overflow", OVERFLOW_RULES[0]) != OVERFLOW_RULES[0] and not settings.get("overflow_source"):
            raise CaseFileError(
                self.path,
                f"{where}.overflow_source",
                f"overflow = {settings['overflow']!r} is a study's rule, and names no source",
                'overflow_source = "the study\'s file and line that applies it"',
            )
        mask, variant = settings.get("mask", "all"), settings.get("variant", "")
        return Case(
            id=case_id(self.family, sae_name, model_name, base_name, mask, variant),
            family=self.family,
            file=str(self.path),
            sae_name=sae_name,
            model_name=model_name,
            base_model_name=base_name,
            **settings,
        )

    def _field(self, where: str, key: str, value: Any) -> Any:
        def bad(problem: str, fix: str) -> CaseFileError:
            return CaseFileError(self.path, f"{where}.{key}", problem, fix)

        if key in ("tokens", "context", "batch_size"):
            if not isinstance(value, int) or value < 1:
                raise bad(f"expected a positive integer, got {value!r}", f"{key} = 8192")
            return value
        if key == "groups":
            if not isinstance(value, list) or not value or not set(value) <= set(METRIC_GROUPS):
                raise bad(f"expected metric groups from {list(METRIC_GROUPS)}, got {value!r}", 'groups = ["ce"]')
            return tuple(value)
        if key == "mask":
            if value not in MASKS:
                raise bad(f"unknown mask {value!r}", f"choose from {list(MASKS)}")
            return value
        if key == "outliers":
            if value is False or value is None:
                return None
            if not isinstance(value, dict) or "threshold" not in value:
                raise bad(
                    "expected a table with threshold (and norm, count_in_ce)",
                    'outliers = { threshold = 200, norm = "scaled" }',
                )
            if value.get("norm", "scaled") not in NORMS or set(value) - {"threshold", "norm", "count_in_ce"}:
                raise bad(
                    f"bad outlier table {value!r}", f"norm is one of {list(NORMS)}; keys threshold, norm, count_in_ce"
                )
            return OutlierSetting(**value)
        if key == "scaling_factor":
            if not (isinstance(value, int | float) and value > 0):
                raise bad(f"expected a positive number, got {value!r}", "scaling_factor = 7.93")
            return float(value)
        if key in (
            "exclude_special_tokens",
            "gpu",
            "slow",
            "drop_first_token",
            "bands_from_full_rows",
            "token_classes",
        ):
            if not isinstance(value, bool):
                raise bad(f"expected true or false, got {value!r}", f"{key} = true")
            return value
        if key == "dtype":
            if problem := dtype_problem(value, "dtype"):
                raise bad(problem, 'dtype = "bfloat16" (and dtype_source = "why")')
            return value
        if key == "overflow":
            if value not in OVERFLOW_RULES:
                raise bad(f"unknown overflow rule {value!r}", f"choose from {list(OVERFLOW_RULES)}")
            return value
        if key == "conventions":
            if not isinstance(value, dict):
                raise bad("expected a table", 'conventions = { ce_recovered = "mean of batch ratios" }')
            return value
        if not isinstance(value, str):
            raise bad(f"expected a string, got {value!r}", f'{key} = "…"')
        return value


def _parse_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise CaseFileError(path, "syntax", str(err), "fix the TOML syntax") from err
    except UnicodeDecodeError as err:
        where = f"not UTF-8 text ({err.reason} at byte {err.start})"
        raise CaseFileError(path, "encoding", where, "save it as UTF-8") from None
    except OSError as err:
        raise CaseFileError(path, "file", f"cannot be read ({err.strerror})", "fix its permissions") from None


def _read(path: Path) -> tuple[list[Case], dict[str, Sweep]]:
    """Every case of one TOML case file and its sweeps, validated."""
    data = _parse_toml(path)
    reader = _Reader(path, data)
    cases = [reader.case(where, entry) for where, entry in reader.entries()]
    if not cases:
        raise CaseFileError(path, "top level", "no cases", "add [[case]], [[grid]] or [[sweep]] entries")
    outlier_check = [c for c in cases if c.outliers and c.outliers.norm == "scaled" and c.scaling_factor is None]
    if outlier_check:
        raise CaseFileError(
            path,
            outlier_check[0].id,
            "a threshold on scaled norms needs scaling_factor",
            'set scaling_factor, or outliers.norm = "raw" / "mean-norm"',
        )
    return cases, {sweep.id: sweep for sweep in reader.sweeps.values()}


def read_case_file(path: Path) -> list[Case]:
    """Every case of one TOML case file, validated."""
    return _read(path)[0]


@dataclass(frozen=True)
class Registry:
    """All cases by id, in file order, the sweeps they were expanded from (by `FAMILY/NAME`), and the claims
    (`sae_bench.cases.claims`) relating cases of a family."""

    cases: dict[str, Case]
    claims: dict[str, Any] = field(default_factory=dict)
    sweeps: dict[str, Sweep] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases.values())

    def __len__(self) -> int:
        return len(self.cases)

    def get(self, case_id: str) -> Case:
        if case_id not in self.cases:
            close = difflib.get_close_matches(case_id, self.cases, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"no case {case_id!r}{hint}")
        return self.cases[case_id]

    def with_sae(self, spec: str, replaces: Callable[[str], bool] = lambda case_id: True) -> Registry:
        """The cases whose id `replaces` accepts (default: all) with their SAE replaced by `spec` (a new release
        gated against the old one's expectations); the others, and the claims, as they are."""
        cases = {cid: replace(case, sae=spec) if replaces(cid) else case for cid, case in self.cases.items()}
        return Registry(cases, self.claims, self.sweeps)

    def with_dtype(self, dtype: str | None) -> Registry:
        """Every case run in `dtype` (`--dtype`: a precision check against the expectations as they are); None: as
        declared."""
        if dtype is None:
            return self
        return Registry({cid: replace(c, dtype=dtype) for cid, c in self.cases.items()}, self.claims, self.sweeps)

    def claim(self, claim_id: str):
        if claim_id not in self.claims:
            close = difflib.get_close_matches(claim_id, self.claims, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"no claim {claim_id!r}{hint}")
        return self.claims[claim_id]

    def sweep(self, name: str) -> Sweep:
        """The sweep `FAMILY/NAME`, or `NAME` when one family alone declares it; else a BadInput with the
        candidates."""
        if name in self.sweeps:
            return self.sweeps[name]
        candidates = sorted(sid for sid, sweep in self.sweeps.items() if sweep.name == name)
        if len(candidates) == 1:
            return self.sweeps[candidates[0]]
        if candidates:
            raise BadInput(
                f"--sweep {name!r} is declared by {len(candidates)} families: say which, --sweep "
                + " or --sweep ".join(candidates)
            )
        raise BadInput(f"no sweep {name!r}; the sweeps: {', '.join(sorted(self.sweeps)) or 'none'}")

    def sweep_cases(self, sweep: Sweep) -> list[Case]:
        """The cases `sweep` expands to, in file order."""
        return [case for case in self if case.family == sweep.family and case.sweep == sweep.name]


def load_registry(directory: Path) -> Registry:
    """Read every `*.toml` case file under `directory`, cases first, then the claims over them; duplicate ids (and
    a sweep a family declares twice) are an error naming both files."""
    cases: dict[str, Case] = {}
    sweeps: dict[str, Sweep] = {}
    paths = sorted(directory.glob("*.toml"))
    if not paths:
        raise BadInput(
            f"{directory} holds no case files (*.toml): give --cases-dir a folder of case files "
            "(docs/cases.md: Add a case)"
        )
    for path in paths:
        found, declared = _read(path)
        for case in found:
            if case.id in cases:
                raise CaseFileError(
                    path, case.id, f"the id is also defined in {cases[case.id].file}", "give one of them a variant"
                )
            cases[case.id] = case
        _add_sweeps(sweeps, declared)
    registry = Registry(cases, {}, sweeps)
    for path in paths:
        registry.claims.update((claim.id, claim) for claim in read_claims(path, _parse_toml(path), registry))
    for claim in registry.claims.values():  # a claim that reads a token class has its case measure the classes
        for case_id in claim.classed_case_ids:
            cases[case_id] = replace(cases[case_id], token_classes=True)
    return registry


def _add_sweeps(sweeps: dict[str, Sweep], new: Mapping[str, Sweep]) -> None:
    """Add `new` to `sweeps`; a family's sweep declared twice (two files, two folders) is an error naming both."""
    for sweep_id, sweep in new.items():
        if sweep_id in sweeps:
            raise CaseFileError(
                sweep.file,
                f"sweep {sweep.name!r}",
                f"family {sweep.family} already declares it in {sweeps[sweep_id].file}",
                "give one of them another name",
            )
        sweeps[sweep_id] = sweep


def load_registries(directories: Sequence[Path]) -> Registry:
    """The cases, sweeps and claims of every case folder; an id defined in two folders is an error naming both."""
    registry = None
    for directory in directories:
        if not Path(directory).is_dir():
            raise BadInput(f"--cases-dir {directory}: no such folder")
        loaded = load_registry(Path(directory))
        if registry is None:
            registry = loaded
            continue
        twice = sorted(set(registry.cases) & set(loaded.cases))
        if twice:
            raise BadInput(f"case {twice[0]} is defined in {registry.cases[twice[0]].file} and in {directory}")
        sweeps = dict(registry.sweeps)
        _add_sweeps(sweeps, loaded.sweeps)
        registry = Registry(registry.cases | loaded.cases, registry.claims | loaded.claims, sweeps)
    return registry


def item_ids(case: Case) -> list[str]:
    """The id of each test item of a case, `CASE:GROUP`, as pytest shows it."""
    return [f"{case.id}:{group}" for group in case.groups]


def cases_selected_by(registry: Registry, expression: str) -> list[str]:
    """The cases whose items (`CASE:GROUP`) the -k expression selects: the unit an SAE is replaced in."""
    selection = Selection.of(expression)
    return [case.id for case in registry if any(selection.matches(item) for item in item_ids(case))]
