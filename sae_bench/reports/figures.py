"""The report's figures (matplotlib, Agg): each takes measured values from the results database and returns a
Figure that names its case ids and run id and labels its axes with units; `save` writes and closes it. Nothing here
measures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LOG_EPS = 1e-10
"""log10(density + 1e-10): a dead feature sits at −10 (docs/design.md §4)."""


def save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout(rect=(0, 0, 1, 0.95 if figure._suptitle is not None else 1))  # room for the suptitle
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def heatmaps(grid: dict[str, pd.DataFrame], family: str, run: int) -> plt.Figure:
    """One heatmap per metric (CE recovered, EV) over SAE (rows) × model (columns)."""
    figure, axes = plt.subplots(1, len(grid), figsize=(5.2 * len(grid), 0.6 * len(next(iter(grid.values()))) + 2.4))
    for ax, (label, table) in zip(np.atleast_1d(axes), grid.items(), strict=True):
        values = table.astype(float).to_numpy()
        measured = values[~np.isnan(values)]  # a grid the run did not measure at all is drawn empty, not warned about
        low = min(0.0, float(measured.min())) if measured.size else 0.0
        image = ax.imshow(values, cmap="viridis", vmin=low, vmax=1.0, aspect="auto")
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right")
        ax.set_yticks(range(table.shape[0]), table.index)
        ax.set_xlabel("model (activations from)")
        ax.set_ylabel("SAE (trained on)")
        for (i, j), value in np.ndenumerate(values):
            dark = not np.isnan(value) and (value - low) / (1.0 - low) > 0.6  # light cells of viridis get dark text
            text = "—" if np.isnan(value) else f"{value:.3f}"
            ax.text(j, i, text, ha="center", va="center", color="k" if dark else "w", fontsize=8)
        ax.set_title(f"{label}\n{family}, run {run}", fontsize=10)
        figure.colorbar(image, ax=ax, label=f"{label} (fraction)")
    return figure


def dose_response(points: pd.DataFrame, cases: str, run: int) -> plt.Figure:
    """CE recovered and EV of the base SAE against fine-tune steps and against weight drift."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, x, label in (
        (axes[0], "steps", "fine-tune steps"),
        (axes[1], "drift", "relative weight drift ‖ΔW‖/‖W‖ (HF checkpoint weights, v2)"),
    ):
        for metric, marker in (("ce_loss_recovered", "o"), ("explained_variance", "s")):
            ax.plot(points[x], points[metric], marker=marker, label=metric)
        for _, row in points.iterrows():
            ax.annotate(
                row["model"], (row[x], row["ce_loss_recovered"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xscale("symlog", linthresh=1 if x == "steps" else 0.01)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction (CE recovered, explained variance)")
        ax.legend(fontsize=8)
    figure.suptitle(f"the base SAE on ever longer fine-tunes: {cases}, run {run}", fontsize=9)
    return figure


def universality(vectors: dict[str, np.ndarray], case: str, run: int) -> plt.Figure:
    """Kutsyk's views: log10 densities in both models (overlaid, and one against the other), and the activation and
    logit similarity of the regular features."""
    log_b = np.log10(vectors["density_base"] + LOG_EPS)
    log_f = np.log10(vectors["density_finetuned"] + LOG_EPS)
    regular = vectors["regular"] > 0.5
    figure, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    bins = np.linspace(-10.5, 0.5, 45)
    axes[0, 0].hist(log_b, bins=bins, alpha=0.6, label="base model")
    axes[0, 0].hist(log_f, bins=bins, alpha=0.6, label="fine-tuned model")
    axes[0, 0].set_xlabel("log10(feature density + 1e-10)")
    axes[0, 0].set_ylabel("features")
    axes[0, 0].legend(fontsize=8)
    axes[0, 1].scatter(log_b, log_f, s=3, alpha=0.5)
    axes[0, 1].plot([-10, 0], [-10, 0], color="grey", lw=0.8)
    axes[0, 1].set_xlabel("log10 density, base model")
    axes[0, 1].set_ylabel("log10 density, fine-tuned model")
    for ax, name in ((axes[1, 0], "activation_similarity"), (axes[1, 1], "logit_similarity")):
        values = vectors[name][regular]
        values = values[np.isfinite(values)]
        ax.hist(values, bins=np.linspace(-1, 1, 41))
        ax.set_xlabel(f"{name.replace('_', ' ')} (Pearson r), regular features")
        ax.set_ylabel("features")
        ax.set_title(
            f"{len(values)} regular features, mean {values.mean():.3f}" if len(values) else "no regular feature",
            fontsize=9,
        )
    figure.suptitle(f"{case}, run {run}", fontsize=10)
    return figure


def outlier_breakdown(shares: pd.DataFrame, family: str, run: int) -> plt.Figure:
    """Stacked shares of outliers per model (BOS / early position / newline / other), with the outlier fraction."""
    figure, ax = plt.subplots(figsize=(max(5, 1.3 * len(shares) + 2), 4))
    bottom = np.zeros(len(shares))
    for kind in ("bos", "early_position", "newline", "other"):
        values = shares[f"outlier_share_{kind}"].fillna(0).to_numpy()
        ax.bar(shares.index, values, bottom=bottom, label=kind.replace("_", " "))
        bottom += values
    for i, fraction in enumerate(shares["outlier_fraction"]):
        ax.text(i, 1.02, f"{fraction:.2%} of tokens", ha="center", fontsize=8)
        if fraction == 0:
            ax.text(i, 0.5, "no outliers", ha="center", fontsize=8, color="grey")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("share of outlier tokens")
    ax.set_xlabel("model (case)")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{family}: what the outliers are, run {run}", fontsize=10)
    return figure


def regressions(rows: pd.DataFrame, run: int) -> plt.Figure:
    """Each regressed metric: expected value, its tolerance band, and what was measured."""
    n = len(rows)
    figure, axes = plt.subplots(n, 1, figsize=(8, 1.3 * n + 1), squeeze=False)
    for ax, (_, row) in zip(axes[:, 0], rows.iterrows(), strict=True):
        low, high = row["expected"] - row["threshold"], row["expected"] + row["threshold"]
        ax.axvspan(low, high, color="tab:green", alpha=0.25, label="expected ± tolerance")
        ax.axvline(row["expected"], color="tab:green")
        if pd.notna(row["value"]):
            ax.plot([row["value"]], [0], "rx", markersize=10, label="measured")
        ax.set_yticks([])
        ax.set_xlabel(f"{row['metric']} (the metric's own units)")
        ax.set_title(f"{row['case_id']} [{row['grp']}]", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="best")
    figure.suptitle(f"regressions, run {run}", fontsize=10)
    return figure


RELEASE_METRICS = {
    "ce_loss_recovered": "CE loss recovered (1 = clean)",
    "ce_delta": "ΔCE, spliced − clean (nats)",
    "explained_variance": "explained variance",
    "l0": "L0 (active features per token)",
}


def release_curves(points: pd.DataFrame, title: str, run: int) -> plt.Figure:
    """Per-layer curves of a sweep: one panel per metric, one line per (SAE label, model) — PT-on-PT, PT-on-IT,
    IT-on-IT, IT-on-PT for a PT and an IT release. points: label, model, layer and the metrics."""
    figure, axes = plt.subplots(1, len(RELEASE_METRICS), figsize=(4.2 * len(RELEASE_METRICS), 3.6))
    for ax, (metric, label) in zip(axes, RELEASE_METRICS.items(), strict=True):
        for (sae, model), line in points.groupby(["label", "model"], sort=True):
            line = line.sort_values("layer")
            ax.plot(line.layer, line[metric], marker="o", label=f"{sae} on {model}")
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.set_xticks(sorted(points.layer.unique()))
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{title} (run {run})", fontsize=10)
    return figure


def forest(table: pd.DataFrame, title: str) -> plt.Figure:
    """The paired release gate: each id's difference (new − old) with its interval, against the margin, one panel
    per metric; red where the verdict is a regression, grey where inconclusive."""
    metrics = list(dict.fromkeys(table.metric))
    rows = list(dict.fromkeys(f"{i}@{m}" for i, m in zip(table["id"], table["model"], strict=True)))
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 0.32 * len(rows) + 1.8), sharey=True)
    colours = {"ok": "tab:blue", "regression": "tab:red", "inconclusive": "grey"}
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        part = table[table.metric == metric]
        for row in part.itertuples():
            y = rows.index(f"{row.id}@{row.model}")
            if row.difference is None or pd.isna(row.difference):
                continue
            ax.errorbar(row.difference, y, xerr=[[row.difference - row.low], [row.high - row.difference]], fmt="o",
                        color=colours[row.verdict], ms=4, capsize=2)  # fmt: skip
            worse = row.margin if row.better == "lower" else -row.margin  # each row's own (a relative margin varies)
            ax.plot(worse, y, marker="|", color="tab:red", ms=14, mew=2, label="margin" if y == 0 else None)
        side = "worse →" if part.better.iloc[0] == "lower" else "← worse"
        ax.legend(fontsize=7, loc="lower right", title=side, title_fontsize=7)
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel(f"{metric}: new − old")
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


TOKEN_CLASS_PANELS_PER_ROW = 4


def token_classes(contributions: pd.DataFrame, family: str, run: int) -> plt.Figure:
    """Where the spliced loss goes: per panel (a model, and its mask), each SAE's ΔCE contribution by token class
    (nats per prediction of the case; a case's bars add up to its ΔCE) above the class's own mean ΔCE per
    prediction, the SAE trained on that model beside the transferred ones; `TOKEN_CLASS_PANELS_PER_ROW` panels a
    row."""
    panels = list(dict.fromkeys(contributions.panel))
    classes = list(dict.fromkeys(contributions["class"]))
    columns = min(len(panels), TOKEN_CLASS_PANELS_PER_ROW)
    blocks = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        2 * blocks, columns, figsize=(4.4 * columns, 3.2 * 2 * blocks), sharey="row", squeeze=False
    )
    rows = (
        ("contribution", "ΔCE contribution\n(nats per prediction of the case)"),
        ("per_prediction", "ΔCE of the class\n(nats per prediction of the class)"),
    )
    for empty in range(len(panels), blocks * columns):  # the last row of panels may not be full
        block, column = divmod(empty, columns)
        axes[2 * block, column].set_visible(False)
        axes[2 * block + 1, column].set_visible(False)
    for index, panel in enumerate(panels):
        block, column = divmod(index, columns)
        part = contributions[contributions.panel == panel]
        saes = list(dict.fromkeys(part.SAE))
        width = 0.8 / len(saes)
        for row, (value, label) in enumerate(rows):
            ax = axes[2 * block + row, column]
            for i, sae in enumerate(saes):
                values = part[part.SAE == sae].set_index("class")[value].reindex(classes)
                ax.bar(np.arange(len(classes)) + (i - (len(saes) - 1) / 2) * width, values.fillna(0), width, label=sae)
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=8)
            if column == 0:
                ax.set_ylabel(label, fontsize=8)
        axes[2 * block, column].set_title(f"on {panel}", fontsize=9)
        axes[2 * block, column].legend(fontsize=6, title="SAE", title_fontsize=6)
        axes[2 * block + 1, column].set_xlabel("token class (of the position spliced)", fontsize=8)
    figure.suptitle(f"{family}: where the spliced loss goes, by token class (run {run})", fontsize=10)
    return figure
