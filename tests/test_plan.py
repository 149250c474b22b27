"""`sae-bench plan`: the FPE it counts from the cases alone equals the FPE the run counts (one hook and across
hooks); calibration is stored per device and read back; the packing puts the longest units first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sae_bench.cases import SHIPPED_CASES, load_registry
from sae_bench.execution import CaseExecutor
from sae_bench.plan import UnitPlan, pack, plan_units
from sae_bench.ray_execution import units_of


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
    assert planned.returncode == 0 and "518 FPE at the floor" in planned.stderr
    assert "on 2 device(s)" in planned.stderr and "device-hours" in planned.stderr


def test_packing_puts_the_longest_first_and_reports_what_fits_nowhere():
    plans = [UnitPlan([], "m", 1.0, peak, seconds) for seconds, peak in ((5, 1), (4, 1), (3, 1), (3, 10), (1, 1))]
    loads, too_big = pack(plans, devices=2, memory_bytes=5)
    assert sorted(loads) == [6, 7] and [p.seconds for p in too_big] == [3]
