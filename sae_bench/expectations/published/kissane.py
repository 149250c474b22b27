"""Kissane et al.'s published results: the three result files of ckkissane/sae-transfer (copied unchanged into
`references/`), and the post's own tables for what the files do not hold (the outlier table, the fine-tuning
table's base and chat rows). Each metric follows the study's reduction: the Pile CE recovered is a mean of
per-batch ratios (`ce_loss_recovered_batch_mean`), its EV a mean of per-token ratios per batch
(`explained_variance_per_token`); the alpaca EV is per-token over all masked tokens pooled
(`explained_variance_per_token_pooled`) and its CE recovered a ratio of token sums (`ce_loss_recovered`).
"""

from __future__ import annotations

import json
import math

from sae_bench.expectations.published.common import REFERENCES, expectation, with_collapse, with_delta
from sae_bench.expectations.rules import ExpectationFile, MetricExpectation

KISSANE_DTYPE = "float32"
"""Kissane et al. ran HookedTransformer.from_pretrained with its default dtype (sae_transfer_script.py)."""

KISSANE = "Kissane et al., SAEs (usually) transfer between base and chat models; ckkissane/sae-transfer@818f189"
POST = "Kissane et al.'s post"

MODELS = {
    "mistral-7B": ("mistral-7b", "base"),
    "mistral-7B-instruct": ("mistral-7b", "instruct"),
    "qwen1.5-0.5B": ("qwen1.5-0.5b", "base"),
    "qwen1.5-0.5B-chat": ("qwen1.5-0.5b", "chat"),
    "qwen1.5-0.5b-chat": ("qwen1.5-0.5b", "chat"),
    "gemma-2b": ("gemma-2b", "base"),
    "gemma-2b-it": ("gemma-2b", "it"),
}
SAES = {
    "mistral-7B-base": "base-sae",
    "mistral-7B-chat": "instruct-sae",
    "qwen-500M-base": "base-sae",
    "qwen-500M-chat": "chat-sae",
    "gemma-2b-base": "base-sae",
    "gemma-2b-it": "it-sae",
}
_PILE_FIELDS = {
    "L0": "l0",
    "ce_rec": "ce_loss_recovered_batch_mean",
    "clean_loss": "ce_clean",
    "sae_recons_loss": "ce_spliced",
    "zero_abl_loss": "ce_zero_ablation",
    "Explained Variance": "explained_variance_per_token",
    "MSE": "mse",
}
_PILE_POSITIONS = (
    "every position of Pile rows of the SAE's context (BOS at each row start and between documents, as the "
    "SAELens store of the time built them), outliers excluded from L0/MSE/EV and un-spliced but scored in CE"
)


def _rows(table: str) -> list[dict]:
    return json.loads((REFERENCES / table).read_text())


def _provenance(table: str, row: dict, settings: str, positions: str) -> dict:
    return {
        "kind": "published",
        "source": KISSANE,
        "dtype": KISSANE_DTYPE,
        "table": table,
        "row": row,
        "settings": settings,
        "positions": positions,
    }


def _pile_file(table: str, row: dict, case: str, row_keys: tuple[str, ...], settings: str) -> ExpectationFile:
    """A Pile-style row (L0, ce_rec, losses, EV, MSE) of one of Kissane's result files as an expectation file."""
    metrics = {ours: expectation(ours, row[theirs]) for theirs, ours in _PILE_FIELDS.items()}
    positions = _PILE_POSITIONS if "ignore" not in settings else _PILE_POSITIONS.split(", outliers")[0]
    provenance = _provenance(f"results/{table}", {key: row[key] for key in row_keys}, settings, positions)
    return with_collapse(ExpectationFile(case, provenance, with_delta(metrics)))


def pile() -> list[ExpectationFile]:
    """results/sae_transfer_results_post.json: every SAE on every model of its family, outliers filtered."""
    table, files = "sae_transfer_results_post.json", []
    for row in _rows(table):
        family, model = MODELS[row["model_name"]]
        settings = (
            f"Pile; outliers above scaled norm {row['Outlier threshold']} un-spliced but scored; "
            f"CE over {row['eval_tokens']} tokens, MSE/L0/EV over 10 shuffled batches of 4096 tokens"
        )
        case = f"{family}/{SAES[row['sae']]}@{model}"
        files.append(_pile_file(table, row, case, ("model_name", "sae"), settings))
    return files


def finetuned() -> list[ExpectationFile]:
    """results/sae_finetuning_evals.json: the fine-tuned base SAEs on the chat models, outliers kept."""
    table, files = "sae_finetuning_evals.json", []
    for row in _rows(table):
        family, model = MODELS[row["model_name"]]
        settings = "Pile; outliers not filtered (threshold 100000, ignore_outliers false); CE over 98304 tokens"
        case = f"{family}/base-sae-ft@{model}/unfiltered"
        files.append(_pile_file(table, row, case, ("model_name", "artifact_path"), settings))
    return files


# The post's appendix, "Fine-tuning" tables (not ignoring outliers): the chat and base SAE rows that the result
# files do not hold. Printed rounded: L0, CE recovered %, clean, SAE CE, CE delta, zero-ablation, EV %, MSE.
_FINETUNING_TABLE = {
    "mistral-7b/instruct-sae@instruct/unfiltered": (101, 99.01, 1.70, 1.78, 0.08, 10.37, 69.4, 1054),
    "mistral-7b/base-sae@instruct/unfiltered": (170, 98.38, 1.70, 1.84, 0.14, 10.37, 32.2, 724350),
    "qwen1.5-0.5b/chat-sae@chat/unfiltered": (28, 95.73, 2.99, 3.42, 0.43, 12.99, 76.2, 198),
    "qwen1.5-0.5b/base-sae@chat/unfiltered": (46, 93.08, 2.99, 3.69, 0.7, 12.99, -160.2, 67934),
}


def finetuning_table() -> list[ExpectationFile]:
    """The base and chat SAE rows of the post's fine-tuning tables, outliers kept."""
    files = []
    for case, (l0, recovered, clean, spliced, delta, zero, ev, mse) in _FINETUNING_TABLE.items():
        metrics = {
            "l0": expectation("l0", l0),
            "ce_loss_recovered_batch_mean": expectation("ce_loss_recovered_batch_mean", recovered / 100),
            "ce_clean": expectation("ce_clean", clean),
            "ce_spliced": expectation("ce_spliced", spliced),
            "ce_zero_ablation": expectation("ce_zero_ablation", zero),
            "explained_variance_per_token": expectation("explained_variance_per_token", ev / 100),
            "mse": expectation("mse", mse),
        }
        model = case.split("@")[1].split("/")[0]
        provenance = {
            "kind": "published",
            "source": KISSANE,
            "dtype": KISSANE_DTYPE,
            "table": f"{POST}, appendix: fine-tuning table ({case.split('/')[0]} {model}, not ignoring outliers)",
            "settings": "Pile, as the fine-tuned SAE's row of results/sae_finetuning_evals.json; printed rounded",
            "positions": _PILE_POSITIONS.split(", outliers")[0],
        }
        files.append(with_collapse(ExpectationFile(case, provenance, with_delta(metrics, given=delta))))
    return files


def alpaca() -> list[ExpectationFile]:
    """results/alpaca_sae_transfer_results.json: base and chat SAEs on the chat model's rollouts / user prompts."""
    files = []
    for row in _rows("alpaca_sae_transfer_results.json"):
        family, model = MODELS[row["chat_model"]]
        mask = row["mask_type"].replace("_", "-")
        for side, label in (("base", "Base"), ("chat", "Chat")):
            sae = "base-sae" if side == "base" else {"mistral-7b": "instruct-sae"}.get(family, f"{model}-sae")
            metrics = {
                "mse": expectation("mse", row[f"{side}_mse"]),
                "l0": expectation("l0", row[f"{side}_l0"]),
                "explained_variance_per_token_pooled": expectation(
                    "explained_variance_per_token_pooled", row[f"{side}_ev"]
                ),
                "ce_loss_recovered": expectation("ce_loss_recovered", row[f"{label}->Chat CE Rec"]),
                "ce_clean": expectation("ce_clean", row["Clean Chat loss"]),
                "ce_spliced": expectation("ce_spliced", row[f"{label}->Chat SAE loss"]),
                "ce_zero_ablation": expectation("ce_zero_ablation", row["Zero abl loss"]),
            }
            provenance = _provenance(
                "results/alpaca_sae_transfer_results.json",
                {"chat_model": row["chat_model"], "mask_type": row["mask_type"], "sae": side},
                "55 alpaca instructions (shuffle seed 42, empty input) in Kissane's templates, greedy 64-token "
                f"rollouts; outliers above scaled norm {row['outlier_threshold']} un-spliced; CE recovered from "
                "token sums; MSE/L0/EV over all masked tokens pooled",
                f"the {mask} positions of Kissane's loss_mask (last two positions of each row dropped)",
            )
            files.append(
                with_collapse(ExpectationFile(f"{family}/{sae}@{model}/{mask}", provenance, with_delta(metrics)))
            )
    return files


# The post, "Identifying failures" table: outliers over the Pile eval tokens (about 100,000), scaled norms.
_OUTLIER_TABLE = {  # case: (fraction, {share: value}, the breakdown as printed)
    "qwen1.5-0.5b/base-sae@base": (0.000488, {"bos": 1.0}, "100% BOS token"),
    "qwen1.5-0.5b/chat-sae@chat": (
        0.001689,
        {"bos": 0.29, "early_position": 0.71},
        "29% BOS Tokens, 71% always within first 10 positions",
    ),
    "gemma-2b/base-sae@base": (0.001892, {"bos": 1.0}, "100% BOS"),
    "gemma-2b/it-sae@it": (0.001892, {"bos": 1.0}, "100% BOS"),
    "mistral-7b/base-sae@base": (
        0.001872,
        {"bos": 0.63, "newline": 0.26, "other": 0.11},
        "63% BOS, 26% first newline token, 11% paragraph symbols",
    ),
    "mistral-7b/instruct-sae@instruct": (
        0.002187,
        {"bos": 0.53, "newline": 0.46, "other": 0.01},
        "53% BOS, 46% newline tokens",
    ),
}
EVAL_TOKENS = 98304


def with_outlier_table(expected: ExpectationFile) -> ExpectationFile:
    """The outlier fraction and breakdown of the case's model, where the post's outlier table gives them.

    Tolerances: 3 binomial standard errors of a fraction of the 98,304 eval tokens, and of a share of the n outlier
    tokens (a share of 1 gets the error of one token in n)."""
    if expected.case not in _OUTLIER_TABLE:
        return expected
    fraction, shares, printed = _OUTLIER_TABLE[expected.case]
    n = fraction * EVAL_TOKENS
    source = {
        "table": f"{POST}, 'Identifying failures' outlier table",
        "printed": printed,
        "mapping": "first newline → newline, paragraph symbols → other; BOS counted first, then position < 10",
    }
    metrics = dict(expected.metrics)
    metrics["outlier_fraction"] = MetricExpectation(
        fraction,
        "both",
        3 * math.sqrt(fraction * (1 - fraction) / EVAL_TOKENS),
        0.0,
        f"3 binomial standard errors over {EVAL_TOKENS} tokens",
        provenance=source,
    )
    for kind in ("bos", "early_position", "newline", "other"):
        p = shares.get(kind, 0.0)
        spread = 3 * math.sqrt(max(p * (1 - p), 1 / n) / n)
        metrics[f"outlier_share_{kind}"] = MetricExpectation(
            p,
            "both",
            spread + 0.005,
            0.0,
            f"3 binomial standard errors over the {n:.0f} outlier tokens, plus the printed rounding (0.005)",
            provenance=source,
        )
    return ExpectationFile(expected.case, expected.provenance, metrics, expected.unchecked)


def kissane() -> list[ExpectationFile]:
    """Every Kissane et al. expectation file."""
    return [with_outlier_table(f) for f in pile()] + alpaca() + finetuned() + finetuning_table()
