"""The `plan` and `calibrate` commands: what a selection costs before it runs, and this device's speed."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from sae_bench.commands.cases import selected_cases, write_table
from sae_bench.errors import EXIT_OK
from sae_bench.execution.plan import _duration, calibrate, pack, plan_table, plan_units, read_calibration
from sae_bench.execution.ray_units import units_of
from sae_bench.sources.fetch import human_size
from sae_bench.suite.runner import check_device


def plan(args: argparse.Namespace) -> int:
    """Per unit the FPE at the floor, peak memory and time (from a calibration); the packing onto N devices."""
    check_device(args.device, here=False)  # a plan is for a device, not necessarily this machine's
    cases = selected_cases(args, "plan")
    if args.dtype is not None:
        cases = [replace(case, dtype=args.dtype) for case in cases]
    dtypes = sorted({case.dtype for case in cases})
    calibrations = {dtype: read_calibration(args.calibration, args.device, dtype) for dtype in dtypes}
    memory = None if args.gpu_memory is None else args.gpu_memory * 1e9
    plans = plan_units(units_of(cases), calibrations, memory)
    write_table(plan_table(plans), "md")
    fpe = sum(p.fpe for p in plans if p.fpe is not None)
    passes = sum(p.passes for p in plans)
    print(f"{len(cases)} cases in {len(plans)} units ({passes} passes); {fpe:.0f} FPE at the floor", file=sys.stderr)
    for plan in plans:
        if memory is not None and plan.peak_bytes is not None and plan.peak_bytes > memory:
            fix = "lower its batch_size or use a bigger device"
            print(f"does not fit {args.gpu_memory:g} GB: {plan.cases[0].id} (peak {human_size(plan.peak_bytes)}); "
                  f"{fix}", file=sys.stderr)  # fmt: skip
    uncalibrated = [dtype for dtype, calibration in calibrations.items() if calibration is None]
    if uncalibrated:
        loads, _ = pack(plans, args.gpus, memory, by="work")
        if sum(loads) and args.gpus > 1:
            print(
                f"on {args.gpus} device(s): the busiest carries {max(loads) / sum(loads):.0%} of the work "
                f"({sum(loads) / max(loads):.2g}x faster than one device)",
                file=sys.stderr,
            )
        runs = " and ".join(f"`sae-bench calibrate --device {args.device} --dtype {d}`" for d in uncalibrated)
        print(f"no time estimate: run {runs} on the device first", file=sys.stderr)
        return EXIT_OK
    loads, _ = pack(plans, args.gpus, memory)
    print(
        f"on {args.gpus} device(s) like '{next(iter(calibrations.values()))['device']}'"
        + (f" with {args.gpu_memory:g} GB" if memory else "")
        + f": {_duration(max(loads))} wall, {sum(loads) / 3600:.3g} device-hours",
        file=sys.stderr,
    )
    return EXIT_OK


def calibrate_command(args: argparse.Namespace) -> int:
    check_device(args.device)  # calibration times this machine's device
    result, path = calibrate(args.device, args.dtype)
    print(
        f"{result['device']}, {result['dtype']}: {result['seconds_per_param_token']:.3e} s per parameter-token "
        f"({result['model']})"
    )
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK
