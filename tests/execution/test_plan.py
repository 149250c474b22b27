"""`sae-bench plan`: the FPE it counts from the cases alone equals the FPE the run counts (one hook and across
hooks); calibration is stored per device and read back; the packing puts the longest units first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sae_bench.cases.registry import SHIPPED_CASES, load_registry
from sae_bench.execution.executor import CaseExecutor
from sae_bench.execution.plan import UnitPlan, pack, plan_units
from sae_bench.execution.ray_units import units_of


def _counted(cases) -> float:
    executor = CaseExecutor()
    executor.plan(cases)
    for case in cases:
        executor.measure(case)
    return float(executor.cost.table().iloc[-1].fpe_run)


@pytest.mark.parametrize(
    "chosen",
    [
        lambda c: c.sweep == "release-a",  # 16 SAEs at 4 hooks of two models: one clean forward each, across hooks
        lambda c: c.id in ("tiny-gemma/base-sae@base", "tiny-gemma/it-sae@base"),  # two SAEs at one hook
    ],
    ids=["across-hooks", "one-hook"],
)
def test_the_plans_fpe_is_the_runs_counted_fpe(chosen):
    cases = [case for case in load_registry(SHIPPED_CASES) if chosen(case)]
    plans = plan_units(units_of(cases), calibration=None)
    assert sum(p.fpe for p in plans) == pytest.approx(_counted(cases), abs=1e-9)


@pytest.mark.full
def test_calibration_is_stored_per_device_and_gives_the_plan_times(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_BENCH_CACHE", str(tmp_path))
    run = subprocess.run(
        [sys.executable, "-m", "sae_bench.cli", "calibrate"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    [stored] = (tmp_path / "calibration").glob("*.json")
    assert json.loads(stored.read_text())["seconds_per_param_token"] > 0
    command = [sys.executable, "-m", "sae_bench.cli", "plan", "--sweep", "release-a", "--gpus", "2"]
    planned = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert planned.returncode == 0 and "515 FPE at the floor" in planned.stderr
    assert "on 2 device(s)" in planned.stderr and "device-hours" in planned.stderr


def test_packing_puts_the_longest_first_and_reports_what_fits_nowhere():
    plans = [UnitPlan([], "m", 1.0, peak, seconds) for seconds, peak in ((5, 1), (4, 1), (3, 1), (3, 10), (1, 1))]
    loads, too_big = pack(plans, devices=2, memory_bytes=5)
    assert sorted(loads) == [6, 7] and [p.seconds for p in too_big] == [3]


@pytest.mark.full
def test_a_pass_beyond_the_device_memory_is_split_as_planned_with_equal_numbers():
    """16 SAEs at 4 hooks on two models, given memory for about 3 SAEs a pass: the run splits each model's pass as
    the plan does, the plan's FPE is the run's, no pass holds more SAEs than fit, and every value equals the
    unsplit run's to float32 rounding (a pass across hooks runs one clean forward)."""
    from sae_bench.engine.metrics import FLOAT32_ROUNDING
    from sae_bench.execution.memory import (
        USABLE_FRACTION,
        sae_activation_bytes,
        sae_weight_bytes,
        sae_width,
        unit_memory_bytes,
    )
    from sae_bench.expectations.rules import FLOAT_FLOOR_REL

    cases = [case for case in load_registry(SHIPPED_CASES) if case.sweep == "release-a"]
    units = units_of(cases)
    first = units[0][0]
    d_model = 128  # the tiny-mistral family's
    one_sae = sae_weight_bytes(sae_width(first), d_model)
    activations = sae_activation_bytes(sae_width(first), d_model, first.batch_size, first.context)
    memory = (unit_memory_bytes(units[0]) + 3.5 * one_sae + activations) / USABLE_FRACTION

    plans = plan_units(units, calibration=None, memory_bytes=memory)
    assert [p.passes for p in plans] == [3, 3]
    split, whole = CaseExecutor(device_memory=memory), CaseExecutor()
    for executor in (split, whole):
        executor.plan(cases)
        for case in cases:
            executor.measure(case)
    assert len(split.shared_passes) == 6 and max(len(p) for p in split.shared_passes) == 3
    assert sum(p.fpe for p in plans) == pytest.approx(float(split.cost.table().iloc[-1].fpe_run), abs=1e-9)
    assert float(split.cost.table().iloc[-1].fpe_run) > float(whole.cost.table().iloc[-1].fpe_run)
    for case in cases:
        got, expected = split.measure(case), whole.measure(case)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            if value is None or isinstance(value, str):
                assert got[name] == value, (case.id, name)
            else:
                assert got[name] == pytest.approx(value, rel=FLOAT_FLOOR_REL, abs=FLOAT32_ROUNDING), (case.id, name)
    assert not split.sources.loaded_saes()  # each pass's SAEs were released after it (their fingerprints kept)
    assert set(split.sources.fingerprints) == {case.sae for case in cases}


def test_a_unit_whose_model_alone_does_not_fit_is_not_split():
    """Splitting SAEs cannot help when the model and one batch exceed the device: one pass, which plan reports as
    fitting no device (the 27B sweep on 80 GB), not one pass per SAE."""
    from sae_bench.execution.memory import USABLE_FRACTION, split_for_memory

    unit = [case for case in load_registry(SHIPPED_CASES) if case.sweep == "release-a"][:8]
    split = split_for_memory(unit, lambda case: 512, base=10**9, d_model=128, memory=10**9 / USABLE_FRACTION - 1)
    assert split == [unit]
    roomy = split_for_memory(unit, lambda case: 512, base=10**6, d_model=128, memory=10**9)
    assert roomy == [unit]
