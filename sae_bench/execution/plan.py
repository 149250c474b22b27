"""`sae-bench plan` and `sae-bench calibrate`: what a selection will cost before it runs, and where.

Per unit (`ray_execution.units_of`: what one shared pass, or a paired case with the prefixes it shares, runs): the
forward passes at the engine's floor (docs/design.md §5),
counted from the cases alone; the peak memory (`sae_bench.execution.memory`:
the model's weights, one batch's residuals and logits, every SAE's weights at the width its id or config states, and
one SAE's feature activations at a time); and the time, from a calibration measured on the present device
(`calibrate`, seconds per parameter-token of a forward pass, stored per device). Given a device's memory, a unit
whose SAEs do not fit one pass is split over passes as the executor splits it. The units are then packed onto N
devices (longest first, onto the least loaded device), for the wall time and the device-hours.

The FPE of a transfer unit: R rows, batches of b, L layers; at a hook with l blocks before it, k SAEs spliced there
and z distinct zero-ablated rows per pass (1 when every row is ablated at the same positions: it continues once for
the pass; R for chat masks): one hook, R·l/L + (R + k·R + z)·(L − l)/L; several hooks,
R + Σ_hooks (k·R + z)·(L − l)/L. Split over
passes, each pass is priced so, a hook's prefix R·l/L counted once for the passes at that hook alone. Exact when
no two variants of one SAE coincide (outlier filtering that filters nothing shares a continuation: then an upper
bound). A paired unit adds each model's prefix and continuations (`evaluate_universality`'s counts are not modelled:
its FPE is left out and said so).
"""

from __future__ import annotations

import json
import platform
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from sae_bench.cache import cache_dir
from sae_bench.cases.registry import CHAT_MASKS, Case
from sae_bench.engine.splicing import HookSite
from sae_bench.errors import BadInput
from sae_bench.execution.memory import (
    model_config,
    model_parameters,
    pass_peak_bytes,
    sae_width,
    split_for_memory,
    unit_memory_bytes,
)
from sae_bench.precision import DEFAULT_DTYPE
from sae_bench.sources.fetch import human_size


@dataclass
class UnitPlan:
    cases: list[Case]
    model: str
    fpe: float | None
    peak_bytes: int | None
    seconds: float | None
    why: str = ""
    passes: int = 1
    work: float | None = None
    """Parameter-tokens of forward work (FPE x tokens per row x parameters): what packing weighs without a
    calibration."""


def passes_fpe(passes: Sequence[Sequence[Case]], n_layers: int) -> float:
    """The floor's FPE of a transfer unit run as these passes (one, or its SAEs split to fit a device; module
    docstring): a one-hook pass continues from its hook's prefix, run once for every pass at that hook; a pass
    across hooks runs one clean forward."""
    case = passes[0][0]
    rows = max(1, case.tokens // case.context)
    zero = rows if case.mask in CHAT_MASKS else 1  # a pass continues each distinct zero-ablated row once
    total, prefixes = 0.0, set()
    for members in passes:
        by_hook = Counter(member.hook for member in members)
        if len(by_hook) == 1:
            ((hook, k),) = by_hook.items()
            before = HookSite.parse(hook).blocks_before
            if hook not in prefixes:
                prefixes.add(hook)
                total += rows * before
            total += (rows + k * rows + zero) * (n_layers - before)
        else:
            total += rows * n_layers
            for hook, k in by_hook.items():
                total += (k * rows + zero) * (n_layers - HookSite.parse(hook).blocks_before)
    return total / n_layers


def plan_units(
    units: Sequence[Sequence[Case]], calibration: Mapping[str, dict | None] | None, memory_bytes: float | None = None
) -> list[UnitPlan]:
    """Each unit's plan, its memory in its cases' dtype and its time from the calibration of that dtype (a mapping
    dtype → calibration; None: no time); with `memory_bytes`, a unit whose SAEs do not fit one pass is split over
    passes as the executor splits it (`memory.split_for_memory`), its FPE and peak those of the split."""
    plans = []
    for unit in units:
        case = unit[0]
        config = model_config(case.model)
        if config is None:
            plans.append(UnitPlan(list(unit), case.model, None, None, None, "model config not here: fetch it first"))
            continue
        n_layers, d_model = config["num_hidden_layers"], config["hidden_size"]
        base, widths = unit_memory_bytes(unit), {member.id: sae_width(member) for member in unit}
        known = base is not None and None not in widths.values()
        passes = [list(unit)]
        if known and not case.paired:
            passes = split_for_memory(
                unit, lambda m, widths=widths: widths[m.id], base=base, d_model=d_model, memory=memory_bytes
            )  # type: ignore[arg-type,return-value]
        peak = None
        if known:
            peak = max(
                pass_peak_bytes(base, [widths[m.id] for m in members], d_model, case.batch_size, case.context)  # type: ignore[arg-type,misc]
                for members in passes
            )
        why = "" if known else "SAE width not in its id: peak memory unknown, its SAEs not split"
        if case.paired:
            plans.append(UnitPlan(list(unit), case.model, None, peak, None, "paired: FPE not modelled"))
            continue
        fpe = passes_fpe(passes, n_layers)
        work = fpe * case.context * model_parameters(config)
        timed = (calibration or {}).get(case.dtype)
        seconds = None if timed is None else work * timed["seconds_per_param_token"]
        if len(passes) > 1:
            why = f"{len(passes)} passes, its SAEs split to fit the memory"
        plans.append(UnitPlan(list(unit), case.model, fpe, peak, seconds, why, len(passes), work))
    return plans


def pack(
    plans: Sequence[UnitPlan], devices: int, memory_bytes: float | None, by: str = "seconds"
) -> tuple[list[float], list[UnitPlan]]:
    """Longest first onto the least-loaded device (LPT), weighed `by` seconds (or by work, without a calibration);
    returns each device's load and the units that fit none."""
    loads = [0.0] * devices
    too_big = []
    for plan in sorted((p for p in plans if getattr(p, by) is not None), key=lambda p: -getattr(p, by)):
        if memory_bytes is not None and plan.peak_bytes is not None and plan.peak_bytes > memory_bytes:
            too_big.append(plan)
            continue
        device = loads.index(min(loads))
        loads[device] += getattr(plan, by)
    return loads, too_big


def plan_table(plans: Sequence[UnitPlan]) -> pd.DataFrame:
    rows = []
    for plan in plans:
        rows.append({
            "unit": plan.cases[0].id + (f" (+{len(plan.cases) - 1})" if len(plan.cases) > 1 else ""),
            "model": plan.model,
            "dtype": plan.cases[0].dtype,
            "fpe": None if plan.fpe is None else round(plan.fpe, 1),
            "passes": plan.passes,
            "peak memory": human_size(plan.peak_bytes),
            "time": "" if plan.seconds is None else _duration(plan.seconds),
            "note": plan.why,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["unit", "model", "dtype", "fpe", "passes", "peak memory", "time", "note"])


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


# -- calibration --------------------------------------------------------------------------------------------------


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))

    return f"cpu {platform.machine()} {torch.get_num_threads()} threads"


def calibration_path(device: str, dtype: str = DEFAULT_DTYPE) -> Path:
    """Per device and dtype (float32's keeps the name it had before dtypes)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower()
    return cache_dir() / "calibration" / f"{slug}{'' if dtype == DEFAULT_DTYPE else '-' + dtype}.json"


def calibrate(
    device: str = "cpu",
    dtype: str = DEFAULT_DTYPE,
    *,
    d_model: int = 512,
    n_layers: int = 6,
    rows: int = 8,
    context: int = 256,
):
    """Seconds per parameter-token of a forward pass on this device in `dtype`: a random decoder of the suite's kind
    (HF's Mistral: gated MLP, RMS norm, rotary), run by HF's own forward as the default backend runs it, timed over
    `rows` x `context` tokens, median of 5 after a warm-up; stored per device and dtype."""
    from transformers import MistralConfig, MistralForCausalLM  # noqa: PLC0415 - transformers loads torch: only `sae-bench calibrate` needs it

    config = MistralConfig(
        hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=d_model // 64,
        num_key_value_heads=d_model // 64, head_dim=64, intermediate_size=4 * d_model, vocab_size=32000,
        max_position_embeddings=context,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MistralForCausalLM(config).to(device=device, dtype=getattr(torch, dtype)).eval()
    tokens = torch.randint(0, config.vocab_size, (rows, context), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    params = sum(p.numel() for p in model.parameters())
    times = []
    with torch.inference_mode():
        for _ in range(6):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(tokens)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    seconds = sorted(times[1:])[2]
    result = {
        "device": device_name(device),
        "seconds_per_param_token": seconds / (params * rows * context),
        "model": f"HF Mistral, d_model {d_model}, {n_layers} layers, {params} parameters",
        "tokens": rows * context,
        "dtype": dtype,
        "torch": torch.__version__,
    }
    path = calibration_path(device, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result, path


def read_calibration(path: str | None, device: str, dtype: str = DEFAULT_DTYPE) -> dict | None:
    """A stored calibration: the file given, else this device's in `dtype` (None when it was never calibrated)."""
    target = Path(path) if path else calibration_path(device, dtype)
    if path and not target.is_file():
        raise BadInput(f"no calibration file {target}; `sae-bench calibrate` on the device writes one")
    if not target.is_file():
        return None
    try:
        calibration = json.loads(target.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        calibration, why = None, str(err)
    else:
        why = "it holds no seconds_per_param_token"
    if not isinstance(calibration, dict) or not isinstance(calibration.get("seconds_per_param_token"), float | int):
        raise BadInput(f"{target} is not a calibration file ({why}); `sae-bench calibrate` on the device writes one")
    return calibration
