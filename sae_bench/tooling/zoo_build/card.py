"""`sae-bench zoo card`: measure the shipped zoo through the library and write `zoo/CARD.md`.

Every number in the card comes from this module run on the committed artifacts (models and SAEs loaded through
`sae_bench.sources.loading`, as the cases load them, on the default backend), on the shipped held-out token rows.
Weight drift is definition 2's: over the HF checkpoints' raw weights, the same on either backend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from sae_bench.engine.drift import weight_drift
from sae_bench.engine.evaluate import EvalConfig, estimate_scaling_factor, evaluate_transfer
from sae_bench.engine.outliers import OutlierPolicy
from sae_bench.reports.seed_report import SEED_TABLE_COLUMNS, seed_table
from sae_bench.sources.loading import load_model, load_sae, load_zoo_data
from sae_bench.sources.zoo.artifacts import read_manifest, zoo_root
from sae_bench.sources.zoo.recipes import CONTEXT, FAMILIES, HOOK, Family

OUTLIER_MEAN_NORMS = 3.0
"""Zoo outlier threshold: 3× the evaluated model's mean norm at the hook (Kissane's Mistral threshold, 200 on
activations scaled to mean norm √4096 = 64, is 3.1× the mean norm)."""

KEPT_MARKER = "<!-- written by hand below this line; `sae-bench zoo card` keeps it -->"


@dataclass
class ZooMeasurer:
    """Loads each zoo model and SAE once and evaluates each SAE × model pair once on the held-out rows (the card's
    tables overlap: the grid, the outlier table and the dose series read the same evaluations)."""

    tokens: torch.Tensor

    def __post_init__(self) -> None:
        self._models: dict[str, object] = {}
        self._saes: dict[str, object] = {}
        self._mean_norms: dict[str, float] = {}
        self._reports: dict[tuple[str, str, bool], object] = {}
        self._drifts: dict[str, float] = {}

    def model(self, name: str):
        if name not in self._models:
            self._models[name] = load_model(f"zoo:{name}")
        return self._models[name]

    def sae(self, name: str):
        if name not in self._saes:
            self._saes[name] = load_sae(f"zoo:{name}")
        return self._saes[name]

    def outlier_threshold(self, model: str) -> float:
        """OUTLIER_MEAN_NORMS × the model's mean raw norm at the hook, on these tokens."""
        if model not in self._mean_norms:
            m = self.model(model)
            self._mean_norms[model] = m.cfg.d_model**0.5 / estimate_scaling_factor(m, self.tokens, HOOK)
        return OUTLIER_MEAN_NORMS * self._mean_norms[model]

    def evaluate(self, sae: str, model: str, *, filter_outliers: bool):
        key = (sae, model, filter_outliers)
        if key not in self._reports:
            policy = OutlierPolicy(self.outlier_threshold(model), norm="raw") if filter_outliers else None
            config = EvalConfig(hook=HOOK, batch_size=32, outliers=policy, progress=False)
            self._reports[key] = evaluate_transfer(self.model(model), self.sae(sae), self.tokens, config)
        return self._reports[key]

    def drift(self, family: str, model: str) -> float:
        """Overall relative weight drift of FAMILY/MODEL from FAMILY/base (0 for the base itself)."""
        name = f"{family}/{model}"
        if name not in self._drifts:
            base = f"{family}/base"
            self._drifts[name] = 0.0 if name == base else weight_drift(self.model(base), self.model(name)).overall
        return self._drifts[name]


def _fmt(frame: pd.DataFrame) -> str:
    """Markdown; undefined values (None, which pandas turns into NaN in float columns) print as "undefined"."""
    return (
        frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="undefined")
    )


def family_section(measurer: ZooMeasurer, family: Family, manifest: dict) -> str:
    """The card section of one family: models, SAEs on their own model, the SAE × model grid, outliers, drift."""
    name = family.name
    models = [n for run in family.models for n in run.outputs.values()]
    grid_models = sorted({m for pair in family.pairs for m in pair}, key=models.index)
    lines = [f"## {name} ({family.architecture})", ""]

    rows = []
    for model in models:
        entry = manifest["models"][f"{name}/{model}"]
        report = measurer.evaluate(f"{name}/{family.saes[0].name}", f"{name}/{model}", filter_outliers=False)
        rows.append(
            {
                "model": model,
                "from": entry["parent"] or "scratch",
                "data": entry["data"],
                "steps": entry["step"],
                "tokens seen": entry["tokens_seen"],
                "clean CE (held-out)": report.ce_clean,
                "weight drift vs base": measurer.drift(name, model),
            }
        )
    lines += ["### Models", "", _fmt(pd.DataFrame(rows)), ""]

    rows = []
    for sae in (s for s in family.saes if not s.release):  # releases: `sae-bench report` of their sweep
        entry = manifest["saes"][f"{name}/{sae.name}"]
        report = measurer.evaluate(f"{name}/{sae.name}", f"{name}/{sae.model}", filter_outliers=False)
        rows.append(
            {
                "SAE": sae.name,
                "trained on": sae.model,
                "steps": entry["steps"],
                "tokens": entry["tokens_seen"],
                "L0": report.l0,
                "EV": report.explained_variance,
                "CE rec.": report.ce_loss_recovered,
                "dead": report.dead_fraction,
            }
        )
    lines += ["### SAEs on their own model", "", _fmt(pd.DataFrame(rows)), ""]

    for filtered in (False, True):
        rows = []
        for sae in (s for s in family.saes if not s.release):
            for model in grid_models:
                report = measurer.evaluate(f"{name}/{sae.name}", f"{name}/{model}", filter_outliers=filtered)
                rows.append({"SAE": sae.name, "model": model} | {m: getattr(report, m) for m in SEED_TABLE_COLUMNS})
        title = f"outliers filtered (> {OUTLIER_MEAN_NORMS:g}× mean norm)" if filtered else "outliers not filtered"
        lines += [f"### SAE × model, {title}", "", _fmt(seed_table(rows)), ""]

    rows = []
    for model in grid_models:
        report = measurer.evaluate(f"{name}/{family.saes[0].name}", f"{name}/{model}", filter_outliers=True)
        shares = report.outliers.shares()
        rows.append(
            {
                "model": model,
                "threshold (raw norm)": measurer.outlier_threshold(f"{name}/{model}"),
                "outlier fraction": report.outliers.fraction,
                **{f"share {k}": v for k, v in shares.items()},
            }
        )
    lines += ["### Outliers", "", _fmt(pd.DataFrame(rows)), ""]

    if family.dose_series:
        rows = []
        for model in family.dose_series:
            report = measurer.evaluate(f"{name}/base-sae", f"{name}/{model}", filter_outliers=False)
            entry = manifest["models"][f"{name}/{model}"]
            rows.append(
                {
                    "model": model,
                    "fine-tune steps": 0 if model == "base" else entry["step"],
                    "weight drift": measurer.drift(name, model),
                    "CE rec. (base SAE)": report.ce_loss_recovered,
                    "EV (base SAE)": report.explained_variance,
                    "clean CE": report.ce_clean,
                }
            )
        lines += ["### Dose series: the base SAE on ever longer chat fine-tunes", "", _fmt(pd.DataFrame(rows)), ""]
    return "\n".join(lines)


def write_card(tokens: int = 32768, root: Path | None = None) -> Path:
    """Measure every family and write CARD.md next to the manifest; returns its path."""
    root = zoo_root() if root is None else root
    manifest = read_manifest(root)
    heldout = load_zoo_data("heldout")["input_ids"]
    n_rows = min(len(heldout), max(1, tokens // CONTEXT))
    measurer = ZooMeasurer(heldout[:n_rows])
    sections = [family_section(measurer, family, manifest) for family in FAMILIES.values()]
    runs = {(m["parent"], m["data"], m["run_wall_s"]) for m in manifest["models"].values()}
    model_wall = sum(wall for *_, wall in runs)
    sae_wall = sum(s["wall_s"] for s in manifest["saes"].values())
    header = [
        "# The sae_bench zoo",
        "",
        "Small models of the seeds' architectures, trained here on CPU, and their SAEs (SAELens, standard ReLU + L1,",
        f"`{HOOK}`). Every number below comes from `sae-bench zoo card` on the committed artifacts:",
        f"{n_rows} held-out rows × {CONTEXT} tokens (`zoo/data/heldout.safetensors`), all positions counted.",
        "Training settings, tokens seen, wall times and library versions are in `manifest.json`.",
        "",
        f"Build time on {manifest['versions']['torch_threads']} CPU threads: models {model_wall / 60:.1f} min, SAEs "
        f"{sae_wall / 60:.1f} min (the per-artifact wall times in the manifest). "
        "Built with: " + json.dumps(manifest["versions"]),
        f"Corpus sha256: `{manifest['corpus']['sha256']}`.",
        "",
    ]
    path = root / "CARD.md"
    kept = ""
    if path.is_file() and KEPT_MARKER in path.read_text():
        kept = path.read_text().split(KEPT_MARKER, 1)[1]
    path.write_text("\n".join(header + sections) + "\n" + KEPT_MARKER + (kept or "\n"))
    return path
