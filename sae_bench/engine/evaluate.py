"""One pass over token batches: an SAE (or several, `evaluate_shared`) spliced into one model → TransferReports.

Per batch the model runs to the hook once (or the prefix is given, `sae_bench.engine.prefix`); each SAE encodes the
evaluated positions; then the clean, spliced and zero-ablated residuals continue from the hook, stacked (DESIGN
§5). Forward passes per batch: 1 + (k + 1)·(L − l)/L full-model equivalents for k distinct spliced residuals
(k = 1 for one SAE), plus each distinct zero-ablated row once: a row ablated at every position is all zeros in every
batch, so it continues once per pass (chat masks ablate each row at its own positions: b per batch). Every statistic
streams (metrics.py), so memory does not grow with tokens.

Position sets, per batch (all (batch, pos) booleans):
- `considered` = position mask ∧ ¬special token (when excluded);
- `reconstructed` = considered ∧ ¬outlier: encoded, spliced, and counted in l0 / mse / EV / density;
- zero ablation zeroes every position under the position mask (as Kissane and SAELens do);
- CE and KL count the prediction made at position t (of token t+1) iff t is considered (and, when the outlier
  policy says so, not an outlier).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from sae_bench.engine import metrics
from sae_bench.engine.backends import Model, backend_of, dtype_name
from sae_bench.engine.eval_config import EvalConfig
from sae_bench.engine.feature_stats import FeatureStats
from sae_bench.engine.outliers import MeanNormStats, OutlierBreakdownStats, newline_token_ids, outlier_mask
from sae_bench.engine.prefix import PrefixActivations, residual_at_hook
from sae_bench.engine.splicing import (
    HookSite,
    SAEDoesNotFit,
    check_sae_fits,
    encode_decode,
    final_residual_from_hook,
    is_causal,
    resolve_hook,
    run_keeping_hooks,
    spliced_residual,
    zero_ablated_residual,
)
from sae_bench.engine.token_batches import TokenBatches, check_token_ids, special_token_ids
from sae_bench.engine.token_classes import TokenClassifier, TokenClassStats
from sae_bench.engine.transfer_report import (
    DistinctRows,
    PredictionScores,
    TransferAccumulators,
    TransferReport,
    finalize_transfer_report,
    score_predictions,
)
from sae_bench.errors import BadInput, UnusableSAE
from sae_bench.precision import HALF


def prepare(model: Model, sae: SAE, config: EvalConfig) -> HookSite:
    """Check the hook and widths, move model and SAE to the configured device, and the model to the configured dtype
    (the SAE keeps its own: `EvalConfig.dtype`)."""
    site = resolve_hook(model, config.hook)
    check_sae_fits(model, sae, site)
    if config.device is not None:
        model.to(config.device, print_details=False)  # HookedTransformer.to takes one device or dtype at a time
        sae.to(config.device)
    if config.dtype is not None and backend_of(model).dtype != config.dtype:
        model.to(config.dtype, print_details=False)
    return site


class NonFiniteActivations(BadInput):
    """Activations that hold NaN or Inf; the message names the positions and the likely cause."""


def check_finite(
    x: Tensor,
    where: str,
    batch_offset: int,
    cause: str = "Check the model's dtype (fp16 overflows) and its weights.",
    positions: Tensor | None = None,
) -> None:
    """Raise naming the (sequence, position) pairs whose activations are NaN or infinite. x: (batch, pos, d), or
    (n, d) rows taken at the True entries of `positions` (batch, pos)."""
    bad = ~torch.isfinite(x).all(dim=-1)
    if bool(bad.any()):
        where_bad = bad.nonzero() if positions is None else positions.nonzero()[bad]
        pairs = [(int(s) + batch_offset, int(p)) for s, p in where_bad[:5].tolist()]
        raise NonFiniteActivations(
            f"{where}: {int(bad.sum())} positions have NaN/Inf activations, first (sequence, position): {pairs}. "
            + cause
        )


def _overflow_cause(x: Tensor) -> str:
    """Why the model's own activations may be non-finite: a half-precision forward overflowed, or its weights."""
    if dtype_name(x.dtype) in HALF:
        return (
            f"The model overflows {dtype_name(x.dtype)} before the hook: run the case in float32 or bfloat16 (its "
            "dtype, or --dtype), or check the model's weights."
        )
    return "Check the model's weights."


def sae_name(sae: SAE) -> str:
    """How an error names an SAE: its class, width, hook and the model it was trained on."""
    meta = sae.cfg.metadata
    return f"{type(sae).__name__} (d_sae {sae.cfg.d_sae}, {meta.hook_name}, trained on {meta.model_name})"


def non_finite_weights(sae: SAE) -> str:
    """The SAE parameters holding NaN or Inf, with the first bad decoder rows: the usual cause of a NaN output."""
    bad = [name for name, p in sae.named_parameters() if not bool(torch.isfinite(p).all())]
    if not bad:
        return "its weights are finite, so the input overflows it: check the scaling factor and the dtype."
    rows = (~torch.isfinite(sae.W_dec).all(dim=-1)).nonzero().flatten()[:5].tolist()
    return f"its weights hold NaN/Inf in {bad}" + (f" (decoder rows {rows})" if rows else "") + "."


@dataclass
class _ZeroRows:
    """A hook's distinct zero-ablated rows of the last batch and their final residuals: a row ablated at every
    position is all zeros in every batch (and one ablated at all but the first is the first token's residual,
    alike), so the next batch whose distinct zero-ablated rows are equal reuses their continuation."""

    rows: Tensor
    finals: Tensor


def _final_residuals(
    model: Model,
    site: HookSite,
    residuals: dict[str, Tensor],
    stack: bool,
    zero_memo: dict[HookSite, _ZeroRows],
) -> tuple[dict[str, Tensor | DistinctRows], int]:
    """The residual after the last block for each residual at the hook (one stacked call or one call each), and the
    rows continued. Identical rows of the zero-ablated residual (every row whose positions are all ablated is zeros)
    continue once: a row's continuation depends on that row alone, so each shares its copy's result (and scoring
    unembeds it once); and rows equal to the last batch's (`zero_memo`) are not continued again."""
    zero_rows, row_of = _distinct_rows(residuals["zero"])
    last = zero_memo.get(site)
    reused = last is not None and last.rows.shape == zero_rows.shape and torch.equal(last.rows, zero_rows)
    inputs = {k: r for k, r in residuals.items() if k != "zero"} | ({} if reused else {"zero": zero_rows})
    if stack:
        sizes = [r.shape[0] for r in inputs.values()]
        stacked = final_residual_from_hook(model, torch.cat(list(inputs.values())), site)
        finals = dict(zip(inputs, stacked.split(sizes), strict=True))
    else:
        finals = {k: final_residual_from_hook(model, r, site) for k, r in inputs.items()}
    if reused:
        finals["zero"] = last.finals
    else:
        zero_memo[site] = _ZeroRows(zero_rows, finals["zero"])
    finals["zero"] = DistinctRows(finals["zero"], row_of)
    return finals, sum(r.shape[0] for r in inputs.values())


def _distinct_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """(the distinct rows, which of them each row is), as torch.unique(dim=0) gives them; rows all equal to the first
    (the usual zero-ablated batch) are found without sorting."""
    if bool((rows == rows[:1]).all()):
        return rows[:1], torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
    return torch.unique(rows, dim=0, return_inverse=True)


LOGITS_PER_CHUNK = {"cpu": 1 << 21, "cuda": 1 << 26}
"""Logits per variant scored at once by default: on CPU the three live (chunk × vocab) float32 tensors fit a 32 MB
last-level cache (measured 1.26× → 1.04× of the no-metrics floor, benchmarks/test_engine_speed.py); on a GPU large
chunks keep it busy."""


def logit_rows_per_chunk(config: EvalConfig, device: torch.device | str, d_vocab: int) -> int:
    """config.logit_rows_per_chunk, or as many rows as fit the device's LOGITS_PER_CHUNK."""
    per_chunk = LOGITS_PER_CHUNK["cuda" if torch.device(device).type == "cuda" else "cpu"]
    return config.logit_rows_per_chunk or max(1, per_chunk // d_vocab)


@torch.inference_mode()
def evaluate_transfer(
    model: Model,
    sae: SAE,
    tokens: Tensor,
    config: EvalConfig,
    *,
    position_mask: Tensor | None = None,
    token_roles: Tensor | None = None,
) -> TransferReport:
    """Splice `sae` into `model` at `config.hook` over `tokens` (n_sequences, pos) and measure everything.

    position_mask: (n_sequences, pos) bool, which positions are evaluated (None: all). token_roles: chat rows'
    roles (`token_classes.ROLES`), read by the token classes only.
    """
    return evaluate_shared(model, [(sae, config)], tokens, position_mask=position_mask, token_roles=token_roles)[0]


SHARED_SETTINGS = ("batch_size", "stack_continuations", "logit_rows_per_chunk", "device", "dtype")
"""What every variant of one shared pass must agree on (they share batches and forward passes); hooks may differ."""


@dataclass
class PassCost:
    """What a shared pass ran, summed over batches. One hook: the rows continued from it (the clean rows, each
    distinct spliced residual's rows, the distinct zero-ablated rows), its prefix being counted apart. Several hooks:
    `block_rows`, every block row at the floor (one clean forward through every block; from each hook, its distinct
    spliced and zero-ablated rows through the blocks after it)."""

    continued_rows: int = 0
    block_rows: int = 0


@dataclass
class _Variant:
    """One (SAE, config) of a shared pass and what it streams."""

    sae: SAE
    config: EvalConfig
    acc: TransferAccumulators
    special: Tensor | None
    site: HookSite
    classifier: TokenClassifier | None = None
    """Set when the config asks for token classes; `classes` then holds the current batch's (batch, pos) labels."""
    classes: Tensor | None = None


@torch.inference_mode()
def evaluate_shared(
    model: Model,
    variants: Sequence[tuple[SAE, EvalConfig]],
    tokens: Tensor,
    *,
    position_mask: Tensor | None = None,
    token_roles: Tensor | None = None,
    prefix: PrefixActivations | None = None,
    cost: PassCost | None = None,
) -> list[TransferReport]:
    """Several SAEs, or several outlier / special-token / scaling variants of one, on one model and one token set
    in one pass; each report equals what `evaluate_transfer` gives for its pair alone.

    One hook: per batch the model runs to the hook once and the clean and zero-ablated continuations run once for
    every variant; each distinct spliced residual (SAE, scale and splice positions) continues once. Each variant
    scores its own counted predictions exactly as a single evaluation does (the same rows, chunks and float64 sums).

    Several hooks (the SAEs of a release): per batch one clean forward through every block keeps the residual at
    every hook; from each hook its distinct spliced residuals and its distinct zero-ablated rows continue. A report
    then equals its pair alone to float32 rounding (the clean run is one forward rather than a continuation stacked
    with others, which reorders float32 sums), and memory holds one batch's hook residuals, not the token set's.

    token_roles: (n_sequences, pos) the role of each position of chat rows (`token_classes.ROLES`), for variants
    that ask for token classes. prefix: the residual at the hook for these batches, already computed
    (`sae_bench.engine.prefix`; one hook only); then the model runs only the continuations. cost: filled with what
    ran, for the suite's forward-pass count.
    """
    if not variants:
        raise ValueError("evaluate_shared: no (SAE, EvalConfig) variants given")
    first = variants[0][1]
    for _, config in variants[1:]:
        differing = [name for name in SHARED_SETTINGS if getattr(config, name) != getattr(first, name)]
        if differing:
            raise ValueError(f"evaluate_shared: variants must agree on {differing} to share a pass")
    states = []
    for index, (sae, config) in enumerate(variants):
        with _blamed_on_variant(index):
            site = prepare(model, sae, config)
        special = special_token_ids(model, config.special_token_ids) if config.exclude_special_tokens else None
        acc = TransferAccumulators(sae.cfg.d_sae, _outlier_breakdown_stats(model))
        acc.ev_pooled = metrics.PooledPerTokenEVStats() if config.pooled_per_token_ev else None
        acc.overflows = metrics.BatchOverflows(config.overflow)
        classifier = None
        if config.token_classes:
            classifier = _token_classifier(model, config)
            acc.token_classes = TokenClassStats()
        if config.feature_stats:
            acc.features = FeatureStats(sae.W_dec)
        states.append(_Variant(sae, config, acc, special, site, classifier))
    sites = sorted({state.site for state in states}, key=lambda s: (s.blocks_before, s.name))
    backend = backend_of(model)
    batches = TokenBatches(tokens, position_mask, first.batch_size, causal=backend.is_causal)
    check_token_ids(batches.tokens, backend.d_vocab)
    if prefix is not None:
        if len(sites) > 1:
            raise ValueError("evaluate_shared: a prefix serves one hook; variants at several hooks run their own")
        prefix.check_serves(sites[0].name, batches)
    device = first.device or backend.device
    chunk = logit_rows_per_chunk(first, device, backend.d_vocab)
    progress = any(config.progress for _, config in variants)
    label = sites[0].name if len(sites) == 1 else f"{len(sites)} hooks"
    zero_memo: dict[HookSite, _ZeroRows] = {}
    for index, batch in enumerate(tqdm(batches, desc=f"evaluate {label}", disable=not progress, leave=False)):
        toks, pos_mask = batch.tokens.to(device), batch.position_mask.to(device)
        roles = None if token_roles is None else token_roles[batch.offset : batch.offset + len(toks), : toks.shape[1]]
        if len(sites) == 1:
            at_hook = {sites[0]: residual_at_hook(model, toks, sites[0], prefix, index, device)}
            clean_final = None  # continues from the hook, stacked with the others
        else:  # one clean forward keeps every hook's residual: each hook's prefix comes free
            at_hook, clean_final = run_keeping_hooks(model, toks, sites)
            if cost is not None:
                cost.block_rows += toks.shape[0] * backend.n_layers
        for site, x in at_hook.items():
            check_finite(x, f"activations at {site.name}", batch.offset, _overflow_cause(x))
        _evaluate_batch(
            model, states, at_hook, clean_final, toks, pos_mask, roles, batch.offset, chunk, first, cost, zero_memo
        )
    reports = []
    for state in states:
        if state.acc.reconstruction.n_tokens == 0:
            raise ValueError(_nothing_left_message(batches, state.acc))
        reports.append(
            finalize_transfer_report(
                state.acc, site=state.site, config=state.config, n_sequences=tokens.shape[0], d_sae=state.sae.cfg.d_sae
            )
        )
    return reports


def _evaluate_batch(
    model: Model,
    states: list[_Variant],
    at_hook: dict[HookSite, Tensor],
    clean_final: Tensor | None,
    toks: Tensor,
    pos_mask: Tensor,
    roles: Tensor | None,
    offset: int,
    chunk: int,
    first: EvalConfig,
    cost: PassCost | None,
    zero_memo: dict[HookSite, _ZeroRows],
) -> None:
    """One batch of a shared pass: per hook, each variant's reconstruction statistics and distinct spliced residual,
    then that hook's continuations (its spliced residuals and its zero-ablated rows; the clean one too when the
    pass has one hook), then the scores of each variant against the clean and that hook's zero-ablated run. Across
    hooks the clean run is scored once per hook: one hook's continuations are live at a time (memory of one hook,
    not of every hook of a release), at the price of re-normalising the clean logits per hook."""
    for site, x in at_hook.items():
        members = [(i, state) for i, state in enumerate(states) if state.site == site]
        spliced: dict[tuple, tuple[str, Tensor]] = {}  # distinct spliced residuals of this batch: key → (name, x)
        plans = []
        for index, state in members:
            with _blamed_on_variant(index):
                plans.append(_splice(state, x, toks, pos_mask, roles, offset, spliced))
        residuals = ({"clean": x} if clean_final is None else {}) | dict(spliced.values())
        residuals["zero"] = zero_ablated_residual(x, pos_mask)
        finals, continued = _final_residuals(model, site, residuals, first.stack_continuations, zero_memo)
        if clean_final is not None:
            finals["clean"] = clean_final
        if cost is not None:
            cost.continued_rows += continued
            cost.block_rows += continued * (backend_of(model).n_layers - site.blocks_before)
        # variants counting the same predictions share the clean and zero scores: one scoring per counted mask
        sharing: dict[bytes, set[str]] = {}
        for name, _, counted_key, _ in plans:
            sharing.setdefault(counted_key, set()).add(name)
        scored: dict[bytes, PredictionScores] = {}
        for (index, state), (name, considered, counted_key, counted) in zip(members, plans, strict=True):
            if dtype_name(x.dtype) not in HALF:  # in half precision the forward may overflow:
                with _blamed_on_variant(index):  # its scores say so (`BatchOverflows`), not the SAE's fault
                    check_finite(
                        finals[name][considered],
                        "the model's last residual with the SAE spliced in",
                        offset,
                        f"The SAE {sae_name(state.sae)} reconstructs finite values that the model overflows on: "
                        "compare their norms with the activations' (scaling factor, dtype).",
                        positions=considered,
                    )
            if counted_key not in scored:
                wanted = {"clean": finals["clean"], "zero": finals["zero"]}
                wanted |= {n: finals[n] for n in sorted(sharing[counted_key])}
                scored[counted_key] = score_predictions(model, wanted, toks, counted, chunk)
            state.acc.add_scores(scored[counted_key], name)
            if state.classes is not None and scored[counted_key].n:
                scores = scored[counted_key]
                state.acc.token_classes.add_scores(
                    state.classes[:, :-1][counted], scores.nll["clean"], scores.nll[name], scores.kl[name]
                )


@contextmanager
def _blamed_on_variant(index: int) -> Iterator[None]:
    """An SAE that does not fit, or whose output is not finite, is that variant's fault alone: raise UnusableSAE
    naming its index, so the caller can run the pass again without it (the others' reports unchanged)."""
    try:
        yield
    except (NonFiniteActivations, SAEDoesNotFit) as err:
        raise UnusableSAE(str(err), variant=index) from err


def _splice(
    state: _Variant,
    x: Tensor,
    toks: Tensor,
    pos_mask: Tensor,
    roles: Tensor | None,
    offset: int,
    spliced: dict[tuple, tuple[str, Tensor]],
) -> tuple[str, Tensor, bytes, Tensor]:
    """Encode this variant's positions of the batch, stream its reconstruction statistics, and add its spliced
    residual to `spliced` unless an identical one (same SAE, scale and positions) is there; returns (the spliced
    residual's name, the considered positions, the counted predictions as a key and as a mask)."""
    config, acc, scale = state.config, state.acc, state.config.scaling_factor
    considered = pos_mask if state.special is None else pos_mask & ~torch.isin(toks, state.special.to(toks.device))
    outlier = torch.zeros_like(considered)
    if config.outliers is not None:
        outlier = outlier_mask(x, config.outliers, scale) & considered
    acc.outliers.update(outlier, toks, considered)
    reconstructed = considered & ~outlier
    sae_pass = encode_decode(state.sae, x[reconstructed], scale)  # (n_reconstructed, ·)
    if not bool(torch.isfinite(sae_pass.x_hat).all()):
        cause = f"The SAE {sae_name(state.sae)} made them: {non_finite_weights(state.sae)}"
        check_finite(sae_pass.x_hat, "SAE reconstruction", offset, cause, positions=reconstructed)
    acc.add_reconstruction(sae_pass)
    if state.classifier is not None:
        state.classes = state.classifier.classes(toks, outlier, roles)
        acc.token_classes.add_reconstruction(
            state.classes[reconstructed], sae_pass.sae_in, sae_pass.x_hat, sae_pass.feature_acts
        )
    if acc.features is not None:
        where = reconstructed.nonzero() + torch.tensor([offset, 0], device=reconstructed.device)
        acc.features.update(sae_pass.sae_in, sae_pass.feature_acts, where)
    key = (id(state.sae), scale, reconstructed.cpu().numpy().tobytes())
    if key not in spliced:
        spliced[key] = (f"spliced{len(spliced)}", spliced_residual(x, reconstructed, sae_pass.x_hat, scale))
    counted = considered[:, :-1]
    if config.outliers is not None and not config.outliers.count_in_ce:
        counted = counted & ~outlier[:, :-1]
    return spliced[key][0], considered, counted.cpu().numpy().tobytes(), counted


def _nothing_left_message(batches: TokenBatches, acc: TransferAccumulators) -> str:
    n_masked = int(batches.position_mask.sum())
    considered, outliers = acc.outliers.n_positions, acc.outliers.n_outliers
    return (
        f"no positions left to evaluate: the position mask selects {n_masked} of {batches.tokens.numel()}, "
        f"special-token exclusion leaves {considered}, the outlier filter removes {outliers}. Widen the mask, "
        "raise the outlier threshold or stop excluding special tokens."
    )


def _token_classifier(model: Model, config: EvalConfig) -> TokenClassifier:
    """The ids that classify positions (`token_classes`): the tokenizer's BOS, special and newline ids."""
    tokenizer = backend_of(model).tokenizer
    given = config.special_token_ids
    if tokenizer is None:
        return TokenClassifier(special_ids=torch.tensor(given or (), dtype=torch.long))
    special = special_token_ids(model, given)
    return TokenClassifier(tokenizer.bos_token_id, special, newline_token_ids(tokenizer))


def _outlier_breakdown_stats(model: Model) -> OutlierBreakdownStats:
    tokenizer = backend_of(model).tokenizer
    if tokenizer is None:
        return OutlierBreakdownStats()
    return OutlierBreakdownStats(bos_token_id=tokenizer.bos_token_id, newline_token_ids=newline_token_ids(tokenizer))


@torch.inference_mode()
def estimate_scaling_factor(
    model: Model,
    tokens: Tensor,
    hook: str,
    *,
    batch_size: int = 8,
    position_mask: Tensor | None = None,
    prefix: PrefixActivations | None = None,
) -> float:
    """√d_model / mean ‖x‖ at `hook` over the given tokens (all positions under the mask, BOS included); from
    `prefix` (in its batches) when the activations are already computed."""
    site = resolve_hook(model, hook)
    norms = MeanNormStats()
    batch_size = batch_size if prefix is None else prefix.batch_size
    batches = TokenBatches(tokens, position_mask, batch_size, causal=is_causal(model))
    if prefix is not None:
        prefix.check_serves(site.name, batches)
    for index, batch in enumerate(batches):
        x = residual_at_hook(model, batch.tokens, site, prefix, index)
        norms.update(x[batch.position_mask.to(x.device)])
    return norms.scaling_factor(backend_of(model).d_model)
