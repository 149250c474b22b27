"""`sae-bench`: the command-line entry point. It declares every command's options, checks what it can before
anything heavy loads, and runs the one command asked for from `sae_bench.commands`, imported only then: the command
line starts fast, and `gate --rehearse` sets the hub stand-ins up before any library that reads hub settings loads."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from sae_bench.cases.registry import SHIPPED_CASES, cases_selected_by, load_registries
from sae_bench.engine.allocator import keep_freed_memory
from sae_bench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, BadInput
from sae_bench.option_values import check_ray_address, false_alarm_rate, gigabytes, positive_int
from sae_bench.options import CASES_DIR, DEVICE_MEMORY, DTYPE, RAY, RESULTS, SAE, SUITE_RUN, add_options
from sae_bench.sources.rehearsal import activate


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function `MODULE:FUNCTION` of `sae_bench.commands`, its module imported now (and only now)."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(f"sae_bench.commands.{module}"), function)


def _add_zoo_commands(commands) -> None:
    zoo = commands.add_parser("zoo", help="the shipped zoo of small model pairs and their SAEs").add_subparsers(
        dest="zoo_command", required=True
    )
    build = zoo.add_parser("build", help="retrain the zoo (deterministic; about 25 minutes on 2 CPU cores)")
    build.add_argument(
        "--only", help="rebuild one family (tiny-mistral), one artifact (tiny-mistral/base-sae), all saes, or data"
    )
    build.add_argument("--root", type=Path, help="build into this folder instead of the shipped zoo/")
    build.set_defaults(run="zoo:build_command")
    zoo.add_parser("list", help="every zoo model and SAE, as a source spec").set_defaults(run="zoo:list_zoo")
    card = zoo.add_parser("card", help="measure the shipped zoo and rewrite zoo/CARD.md")
    card.add_argument("--tokens", type=positive_int, default=32768, help="held-out tokens per measurement")
    card.set_defaults(run="zoo:card")


SINGLE_ONLY = {"sae": SAE.flags[0], "cases": "--cases", "rehearse": "--rehearse", "ray": RAY.flags[0]}
SINGLE_ONLY |= {"device_memory": DEVICE_MEMORY.flags[0]}
"""Options of the single-SAE gate that the release gate does not honour (it runs in this process, on the zoo or the
hub as its sources say; it has no stand-ins)."""
RELEASE_ONLY = {"sweep": "--sweep", "alpha": "--alpha", "rows_per_unit": "--rows-per-unit"}
RELEASE_ONLY |= {"start_rows": "--start-rows", "budget_rows": "--budget-rows", "report": "--report"}
RELEASE_ONLY |= {"allow_removed": "--allow-removed"}
"""Options of the release gate that the single-SAE gate does not honour."""


def _given(args: argparse.Namespace, options: dict[str, str]) -> list[str]:
    return [flag for name, flag in options.items() if getattr(args, name) not in (None, False)]


def _options(flags: list[str]) -> str:
    return f"{flags[0]} is an option" if len(flags) == 1 else f"{', '.join(flags)} are options"


def _gate(args: argparse.Namespace) -> int:
    """One SAE (--sae, --cases) or a release (--release, --baseline, --sweep); each mode refuses the other's options
    rather than ignore them."""
    if args.results and args.no_results:
        raise BadInput("gate: --results and --no-results contradict each other; give one")
    if args.release or args.baseline:
        if refused := _given(args, SINGLE_ONLY):
            raise BadInput(
                f"gate --release: {_options(refused)} of the single-SAE gate (--sae, --cases); the release gate "
                "runs its paired passes in this process, on its own releases, and does not honour them. Drop them"
            )
        return command("gate:release")(args)
    if refused := _given(args, RELEASE_ONLY):
        raise BadInput(
            f"gate --sae: {_options(refused)} of the release gate (--release, --baseline, --sweep), which the "
            "single-SAE gate does not honour. Drop them, or gate a whole release"
        )
    if not args.sae or not args.cases:
        raise BadInput("gate: give --sae and --cases (one SAE), or --release, --baseline and --sweep (a release)")
    if args.ray is not None:
        check_ray_address(args.ray)
    if args.rehearse:  # before anything imports huggingface_hub, which reads its settings once
        activate()  # then the registry (whose saelens: sweeps import SAELens) names the hook a new SAE's stand-in reads
        args.registry = load_registries((SHIPPED_CASES, *args.cases_dir))  # read once: the gate takes it on
        activate(extra_saes=[args.sae], extra_hook=_gated_hook(args.registry, args.cases))
    return command("gate:single")(args)


def _gated_hook(registry, cases: str) -> str | None:
    """The hook of the first hub case the gate selects: where a stand-in for a new hub SAE must read."""
    hub = [cid for cid in cases_selected_by(registry, cases) if registry.get(cid).tier == "hub"]
    return registry.get(hub[0]).hook if hub else None


def _add_gate_command(commands) -> None:
    gate = commands.add_parser(
        "gate",
        help="check a new SAE against the expectations of the cases it replaces (--sae, --cases), or a whole "
        "release against the one it replaces (--release, --baseline, --sweep); exit 0 ok, 1 regression, 2 bad input",
    )
    SAE.add_to(gate.add_argument)
    gate.add_argument(
        "--cases",
        help="-k expression ('@' allowed) over item ids CASE:GROUP; the SAE is replaced in every case it selects an "
        "item of",
    )
    gate.add_argument("--junit", metavar="FILE", help="write JUnit XML here (each entry names the SAE and its sha256)")
    gate.add_argument("--table", metavar="FILE", help="write the verdict table here (.md or .csv)")
    add_options(gate.add_argument, SUITE_RUN)
    release = gate.add_argument_group("a whole release against the one it replaces (paired, same tokens)")
    release.add_argument("--release", help="the new release: saelens:RELEASE, zoo:FAMILY/RELEASE or a folder")
    release.add_argument("--baseline", help="the release it replaces, in the same forms")
    release.add_argument("--sweep", help="the sweep whose models, rows, hooks and margins to use")
    release.add_argument(
        "--alpha", type=false_alarm_rate, help="false-alarm rate over the whole release, in (0, 0.5] (default 0.05)"
    )
    release.add_argument("--rows-per-unit", type=positive_int, help="rows per paired unit (one shared pass; default 4)")
    release.add_argument("--start-rows", type=positive_int, help="rows per model at the first look (default 32)")
    release.add_argument(
        "--budget-rows", type=positive_int, help="most rows per model (doubling per look; default 128)"
    )
    release.add_argument("--report", metavar="DIR", help="write the forest plot (forest.png) into this folder")
    release.add_argument("--allow-removed", action="store_true", help="an id only the baseline has is not a failure")
    gate.add_argument(
        "--rehearse",
        action="store_true",
        help="dry-run offline on the hub stand-ins: exit 0 when every selected case ran end to end with the SAE "
        "(verdicts go to --table but, on miniatures, do not set the exit code)",
    )
    gate.set_defaults(run=_gate, registry=None)


def _add_selection(parser) -> None:
    parser.add_argument("-k", metavar="EXPR", help="-k expression over CASE:GROUP ids, as pytest's ('@' allowed)")
    parser.add_argument("--case-id", action="append", default=[], metavar="ID", help="a case id (repeatable)")
    parser.add_argument("--sweep", help="every case a sweep expands to")
    CASES_DIR.add_to(parser.add_argument)


def _add_plan_commands(commands) -> None:
    plan = commands.add_parser("plan", help="what the selected cases cost before they run: FPE, memory, time, packing")
    _add_selection(plan)
    plan.add_argument("--gpus", type=positive_int, default=1, help="devices to pack the units onto (default 1)")
    plan.add_argument(
        "--gpu-memory",
        type=gigabytes,
        metavar="GB",
        help="memory of each device, in GB: a unit whose SAEs do not fit one pass is split over passes, as the run "
        "splits it with --device-memory",
    )
    plan.add_argument("--device", default="cpu", help="whose calibration to read (default cpu)")
    plan.add_argument("--calibration", metavar="FILE", help="a calibration file written by `sae-bench calibrate`")
    DTYPE.add_to(plan.add_argument)
    plan.set_defaults(run="plan:plan")
    calibrate = commands.add_parser("calibrate", help="measure this device's forward speed, for `sae-bench plan`")
    calibrate.add_argument("--device", default="cpu")
    DTYPE.add_to(
        calibrate.add_argument,
        default="float32",
        help="the precision to time the forward in (default float32); `plan` reads each unit's own",
    )
    calibrate.set_defaults(run="plan:calibrate_command")


def _add_fetch_command(commands) -> None:
    fetch = commands.add_parser(
        "fetch", help="download what the selected hub cases need (models, SAE folders, artifacts, dataset records)"
    )
    _add_selection(fetch)
    fetch.add_argument("--dry-run", action="store_true", help="list what would be fetched, with sizes; fetch nothing")
    fetch.set_defaults(run="fetch:fetch_command")


def _add_cases_command(commands) -> None:
    cases = commands.add_parser("cases", help="list the registered cases (a sweep's expanded cases with --sweep)")
    cases.add_argument("--sweep", help="only the cases this sweep expands to")
    cases.add_argument("--cases", help="-k expression over CASE:GROUP ids ('@' allowed)")
    CASES_DIR.add_to(cases.add_argument)
    cases.add_argument("--format", choices=("md", "csv"), default="md")
    cases.set_defaults(run="cases:cases")


def _add_explain_command(commands) -> None:
    explain = commands.add_parser(
        "explain", help="where a transfer case's loss goes: every metric per token class (first/BOS, special, …)"
    )
    explain.add_argument("case", help="a transfer case id, SAE@MODEL (`sae-bench cases` lists them)")
    explain.add_argument("--against", metavar="CASE", help="another case beside it, e.g. the model's own SAE")
    explain.add_argument(
        "--own",
        metavar="CASE",
        help="the same SAE on the model it was trained on: which of its features are born, die or shift (10x) here, "
        "and the largest moves by density and by latent scaling, with where each fires most on both models",
    )
    explain.add_argument(
        "--top", type=positive_int, default=10, help="features listed per ranking (density, latent scaling): 10"
    )
    explain.add_argument("--device", default="cpu")
    CASES_DIR.add_to(explain.add_argument)
    explain.add_argument("--format", choices=("md", "csv"), default="md")
    explain.set_defaults(run="explain:explain")


def _add_expectation_commands(commands) -> None:
    group = commands.add_parser("expectations", help="expectation files").add_subparsers(
        dest="expectations_command", required=True
    )
    published = group.add_parser("published", help="write the hub cases' expectations from the published results")
    published.add_argument(
        "--root", type=Path, help="expectations folder to write (default in a checkout: its expectations/)"
    )
    published.set_defaults(run="expectations:published")
    migrate = group.add_parser(
        "migrate",
        help="rewrite expectation files written before definition versions (format 1) as format 2, in place: each "
        "value gains version 1, nothing else changes",
    )
    migrate.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="folders or files (default in a checkout: expectations/)"
    )
    migrate.set_defaults(run="expectations:migrate")


def _add_result_commands(commands) -> None:
    results = argparse.ArgumentParser(add_help=False)
    RESULTS.add_to(results.add_argument)
    report = commands.add_parser("report", parents=[results], help="seed-style tables and figures of a recorded run")
    report.add_argument("--run", dest="run_id", default="latest", help="run id, or latest")
    report.add_argument("--cases", help="-k style expression selecting cases ('@' allowed)")
    report.add_argument("--out", type=Path, required=True, help="folder for report.html, report.md and the PNGs")
    report.set_defaults(run="results:report")
    compare = commands.add_parser(
        "compare",
        parents=[results],
        help="metrics that moved between two runs (exit 1 on a regression beyond tolerance or a vanished case)",
    )
    compare.add_argument("--run", dest="run_id", default="latest", help="run id, or latest")
    compare.add_argument("--baseline", help="run id to compare with (default: the run before)")
    compare.add_argument("--format", choices=("md", "csv"), default="md")
    compare.add_argument(
        "--allow-partial",
        action="store_true",
        help="compare even when a run did not finish (interrupted, stopped by an error); what it did not reach "
        "counts as vanished",
    )
    compare.add_argument(
        "--allow-redefined",
        action="store_true",
        help="compare values measured under different definitions of their metric (refused otherwise, exit 2); "
        "such rows say both versions in their definition column",
    )
    compare.add_argument(
        "--allow-other-dtype",
        action="store_true",
        help="compare cases whose models ran in different dtypes (refused otherwise, exit 2): a precision check, "
        "judged like the others, their dtype column saying both",
    )
    compare.set_defaults(run="results:compare")
    hist = commands.add_parser(
        "history", parents=[results], help="one metric of one case across runs (and, with --out, its trend as a PNG)"
    )
    hist.add_argument("--case", required=True, help="case id")
    hist.add_argument("--metric", required=True, help="metric name")
    hist.add_argument("--format", choices=("md", "csv"), default="md")
    hist.add_argument("--out", type=Path, help="write the trend figure (PNG) here")
    hist.set_defaults(run="results:history_command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-bench",
        description="Does an SAE still work when spliced into a model it was not trained on? Exit codes: 0 ok, "
        "1 regression, 2 bad input, 130 interrupted.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)
    metrics = commands.add_parser("metrics", help="list every reported metric with its definition")
    metrics.set_defaults(run="info:metrics")
    commands.add_parser("versions", help="print the versions the numbers depend on").set_defaults(run="info:versions")
    _add_zoo_commands(commands)
    _add_expectation_commands(commands)
    _add_gate_command(commands)
    _add_cases_command(commands)
    _add_fetch_command(commands)
    _add_plan_commands(commands)
    _add_explain_command(commands)
    commands.add_parser(
        "run",
        help="the benchmark suite, from any folder: `sae-bench run -k mistral` is `pytest benchmarks -k mistral` on "
        "the installed suite (every pytest and suite option passes through)",
        add_help=False,
    )
    _add_result_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every known error becomes one line on stderr and its exit code (docs/design.md §12)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # pytest parses the rest
        keep_freed_memory()
        return command("run:run_suite")(argv[1:])
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    keep_freed_memory()
    try:
        return command(args.run)(args) if isinstance(args.run, str) else args.run(args)
    except KeyboardInterrupt:
        print("sae-bench: interrupted (Ctrl-C); nothing after this point ran", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BadInput, OSError, KeyError, ValueError) as err:
        if args.debug:
            raise
        print(f"sae-bench {args.command}: {one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT


def one_line(err: BaseException) -> str:
    """An exception as one message: a KeyError's text without its quotes, the class name only where it helps."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text if isinstance(err, BadInput | KeyError) else f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
