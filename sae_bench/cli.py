"""`sae-bench`: the command-line entry point."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from pathlib import Path

from sae_bench.allocator import keep_freed_memory
from sae_bench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_REGRESSION, BadInput
from sae_bench.option_values import false_alarm_rate, gigabytes, positive_int


def _print_metrics(_: argparse.Namespace) -> int:
    """Every metric of every group, with its definition (each kept where the metric is computed)."""
    from sae_bench.cases import METRIC_GROUPS
    from sae_bench.outliers import OUTLIER_METRIC_DOCS
    from sae_bench.results import TransferReport
    from sae_bench.universality import PAIRED_METRIC_DOCS

    docs = TransferReport.metric_docs() | OUTLIER_METRIC_DOCS | PAIRED_METRIC_DOCS
    width = max(len(name) for names in METRIC_GROUPS.values() for name in names)
    for group, names in METRIC_GROUPS.items():
        print(f"[{group}]")
        for name in names:
            print(f"  {name:<{width}}  {docs[name]}")
    return 0


def _print_versions(_: argparse.Namespace) -> int:
    for package in ("sae-transfer-bench", "sae-lens", "transformer-lens", "torch"):
        print(f"{package} {version(package)}")
    return 0


def _zoo_build(args: argparse.Namespace) -> int:
    from sae_bench.shipped import in_checkout
    from sae_bench.zoo.artifacts import zoo_root
    from sae_bench.zoo.build import build

    if args.root is None and not in_checkout():  # never into the installed package
        raise BadInput("zoo build: pass --root DIR (an installed suite's zoo is part of the package)")
    build(zoo_root() if args.root is None else args.root, only=args.only)
    return 0


def _zoo_list(_: argparse.Namespace) -> int:
    from sae_bench.zoo.recipes import model_names, sae_names

    for name in model_names() + sae_names():
        print(f"zoo:{name}")
    return 0


def _zoo_card(args: argparse.Namespace) -> int:
    from sae_bench.zoo.card import write_card

    path = write_card(tokens=args.tokens)
    print(f"wrote {path}")
    return 0


def _add_zoo_commands(commands) -> None:
    zoo = commands.add_parser("zoo", help="the shipped zoo of small model pairs and their SAEs").add_subparsers(
        dest="zoo_command", required=True
    )
    build = zoo.add_parser("build", help="retrain the zoo (deterministic; about 25 minutes on 2 CPU cores)")
    build.add_argument(
        "--only", help="rebuild one family (tiny-mistral), one artifact (tiny-mistral/base-sae), all saes, or data"
    )
    build.add_argument("--root", type=Path, help="build into this folder instead of the shipped zoo/")
    build.set_defaults(run=_zoo_build)
    zoo.add_parser("list", help="every zoo model and SAE, as a source spec").set_defaults(run=_zoo_list)
    card = zoo.add_parser("card", help="measure the shipped zoo and rewrite zoo/CARD.md")
    card.add_argument("--tokens", type=positive_int, default=32768, help="held-out tokens per measurement")
    card.set_defaults(run=_zoo_card)


def _write_published(args: argparse.Namespace) -> int:
    from sae_bench.cases import expectation_path
    from sae_bench.published import published_expectations
    from sae_bench.shipped import in_checkout, shipped

    if args.root is None:
        if not in_checkout():  # an installed suite never writes into its own package or the current folder
            raise BadInput("expectations published: pass --root DIR, the folder to write the files into")
        args.root = shipped("expectations")
    if args.root.exists() and not args.root.is_dir():
        raise BadInput(f"expectations published --root {args.root} is a file; give a folder")

    for expected in published_expectations():
        path = expectation_path(args.root, expected.case)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expected.to_json())
        print(f"wrote {path}")
    return 0


SINGLE_ONLY = {"sae": "--sae", "cases": "--cases", "rehearse": "--rehearse", "ray": "--ray"}
SINGLE_ONLY |= {"device_memory": "--device-memory"}
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
    if args.release or args.baseline:
        if refused := _given(args, SINGLE_ONLY):
            raise BadInput(
                f"gate --release: {_options(refused)} of the single-SAE gate (--sae, --cases); the release gate "
                "runs its paired passes in this process, on its own releases, and does not honour them. Drop them"
            )
        return _release_gate(args)
    if refused := _given(args, RELEASE_ONLY):
        raise BadInput(
            f"gate --sae: {_options(refused)} of the release gate (--release, --baseline, --sweep), which the "
            "single-SAE gate does not honour. Drop them, or gate a whole release"
        )
    if not args.sae or not args.cases:
        raise BadInput("gate: give --sae and --cases (one SAE), or --release, --baseline and --sweep (a release)")
    _check_results_options(args)
    if args.ray is not None:
        from sae_bench.ray_execution import check_ray_address

        check_ray_address(args.ray)
    if args.rehearse:  # before anything imports huggingface_hub, which reads its settings once
        from sae_bench.rehearsal import activate

        activate()  # then the registry (whose zoo sweeps import SAELens) names the hook a new SAE's stand-in reads
        activate(extra_saes=[args.sae], extra_hook=_gated_hook(args))
    from sae_bench.gate import run_gate

    results = ["--no-results"] if args.no_results else [f"--results={args.results}"] if args.results else []
    results += [] if args.ray is None else ["--ray", args.ray]
    results += [] if args.device_memory is None else [f"--device-memory={args.device_memory}"]
    return run_gate(
        args.sae,
        args.cases,
        junit=args.junit,
        table=args.table,
        rehearse=args.rehearse,
        cases_dirs=args.cases_dir,
        pytest_args=results,
    )


def _check_results_options(args: argparse.Namespace) -> None:
    if args.results and args.no_results:
        raise BadInput("gate: --results and --no-results contradict each other; give one")


def _release_gate(args: argparse.Namespace) -> int:
    """The paired release gate: exit 0 when every shared id is shown not worse than the baseline by more than its
    margin on every model, 1 on a regression, an inconclusive verdict at the budget or a removed id. Everything
    it is told is checked before anything runs; it records its run like every gate."""
    from sae_bench.cases import SHIPPED_CASES, load_registries
    from sae_bench.gate import output_problem
    from sae_bench.release_gate import DEFAULTS, check_settings, load_releases, paired_release_gate, sweep_plan

    if not (args.release and args.baseline and args.sweep):
        raise BadInput("gate: a release gate needs --release NEW, --baseline OLD and --sweep NAME")
    for name, default in DEFAULTS.items():
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    check_settings(
        rows_per_unit=args.rows_per_unit, start_rows=args.start_rows, budget_rows=args.budget_rows, alpha=args.alpha
    )
    _check_results_options(args)
    if problem := output_problem({"--junit": args.junit, "--table": args.table}) or _folder_problem(args.report):
        raise BadInput(problem)
    plan = sweep_plan(load_registries((SHIPPED_CASES, *args.cases_dir)), args.sweep)
    new, old = load_releases(plan, args.release, args.baseline)
    record = _ReleaseRecord.open(args, plan, new, old)
    try:
        verdicts = paired_release_gate(
            plan,
            new,
            old,
            rows_per_unit=args.rows_per_unit,
            start_rows=args.start_rows,
            budget_rows=args.budget_rows,
            alpha=args.alpha,
        )
    except BaseException as err:
        record.finish(EXIT_INTERRUPTED if isinstance(err, KeyboardInterrupt) else EXIT_BAD_INPUT)
        raise
    code = EXIT_REGRESSION if verdicts.regressed(allow_removed=args.allow_removed) else EXIT_OK
    _write_release_outputs(args, plan, verdicts)
    record.measurements(plan, verdicts)
    record.finish(code)
    return code


def _folder_problem(folder: str | None) -> str | None:
    """A --report folder that cannot be made: a file in its place, or under a file."""
    if folder is None:
        return None
    path = Path(folder).absolute()
    blocking = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        return f"--report {folder}: {blocking} is a file; give a folder path"
    return None


def _write_release_outputs(args: argparse.Namespace, plan, verdicts) -> None:
    """The verdict table (stdout, --table), the JUnit file, the forest plot, and the run's summary on stderr."""
    from sae_bench.release_gate import junit_xml

    table = verdicts.table
    if args.table:
        Path(args.table).write_text(
            table.to_csv(index=False) if args.table.endswith(".csv") else table.to_markdown(index=False) + "\n"
        )
    if args.junit:
        Path(args.junit).write_text(junit_xml(plan, verdicts, allow_removed=args.allow_removed))
    print(table.to_markdown(index=False, floatfmt=".4g"))
    if args.report:
        from sae_bench.report_figures import forest, save

        Path(args.report).mkdir(parents=True, exist_ok=True)
        title = f"{args.release} against {args.baseline} (sweep {plan.name}, {verdicts.rows_used} rows per model)"
        print(f"wrote {save(forest(table, title), Path(args.report) / 'forest.png')}", file=sys.stderr)
    for kind, ids in (("added", verdicts.added), ("removed", verdicts.removed)):
        if ids:
            print(f"{kind} in --release: {', '.join(ids)}", file=sys.stderr)
    counts = table.verdict.value_counts().to_dict()
    print(
        f"sae-bench gate: {verdicts.rows_used} rows per model, verdicts {counts} (alpha {args.alpha})", file=sys.stderr
    )


class _ReleaseRecord:
    """The release gate's run in the results database (none with --no-results): the command line, both releases'
    specs and per-id sha256, each judged difference, and the exit status."""

    def __init__(self, db, run: int | None):
        self.db, self.run = db, run

    @classmethod
    def open(cls, args: argparse.Namespace, plan, new, old) -> _ReleaseRecord:
        import json
        from importlib.metadata import version

        from sae_bench.results_db import ResultsDB, default_path
        from sae_bench.suite import PACKAGES

        if args.no_results:
            return cls(None, None)
        db = ResultsDB(args.results or default_path())
        releases = {r.option: {"source": r.source, "sha256": r.sha256} for r in (new, old)}
        selection = json.dumps({"command": " ".join(["sae-bench", *sys.argv[1:]]), "sweep": plan.name} | releases)
        versions = {p: version(p) for p in PACKAGES}
        return cls(db, db.start_run(selection=selection, device="cpu", git_commit=None, versions=versions))

    def measurements(self, plan, verdicts) -> None:
        from sae_bench.results_db import CaseMeasurement
        from sae_bench.sources import source_fingerprint

        if self.db is None:
            return
        family, sweep = plan.name.split("/", 1)
        for (sae_id, model), rows in verdicts.table.groupby(["id", "model"], sort=False):
            spec = plan.models[model]
            self.db.record(
                self.run,
                CaseMeasurement(
                    f"{family}/{sweep}:{sae_id}@{model}",
                    "paired-release",
                    {f"{m}_paired_difference": v for m, v in zip(rows.metric, rows.difference, strict=True)},
                    {},
                    rows.assign(metric=rows.metric + "_paired_difference", expected=None, threshold=None,
                                direction=None)[["metric", "expected", "threshold", "direction", "verdict"]],
                    verdicts.new.specs[sae_id],
                    verdicts.new.sha256[sae_id],
                    spec,
                    source_fingerprint(spec),
                    verdicts.rows_used * plan.context,
                    f"baseline {verdicts.old.specs[sae_id]} (sha256 {verdicts.old.sha256[sae_id]})",
                ),
            )  # fmt: skip

    def finish(self, code: int) -> None:
        if self.db is not None:
            self.db.finish_run(self.run, {EXIT_OK: 0, EXIT_REGRESSION: 1, EXIT_INTERRUPTED: 2}.get(code, 3))


def _gated_hook(args: argparse.Namespace) -> str | None:
    """The hook of the first hub case the gate selects: where a stand-in for a new hub SAE must read."""
    from sae_bench.cases import SHIPPED_CASES, cases_selected_by, load_registries

    registry = load_registries((SHIPPED_CASES, *args.cases_dir))
    hub = [cid for cid in cases_selected_by(registry, args.cases) if registry.get(cid).tier == "hub"]
    return registry.get(hub[0]).hook if hub else None


def _add_gate_command(commands) -> None:
    gate = commands.add_parser(
        "gate",
        help="check a new SAE against the expectations of the cases it replaces (--sae, --cases), or a whole "
        "release against the one it replaces (--release, --baseline, --sweep); exit 0 ok, 1 regression, 2 bad input",
    )
    gate.add_argument("--sae", help="the new SAE: saelens:RELEASE/ID, hf:, wandb:, zoo:, or a folder")
    gate.add_argument(
        "--cases",
        help="-k expression ('@' allowed) over item ids CASE:GROUP; the SAE is replaced in every case it selects an "
        "item of",
    )
    gate.add_argument(
        "--cases-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a folder of your own case files, added to the shipped ones (repeatable); its expectation files live "
        "in its expectations/ subfolder",
    )
    gate.add_argument("--junit", metavar="FILE", help="write JUnit XML here (each entry names the SAE and its sha256)")
    gate.add_argument("--table", metavar="FILE", help="write the verdict table here (.md or .csv)")
    gate.add_argument(
        "--results", metavar="PATH", help="record the run in this results database (default: as pytest benchmarks)"
    )
    gate.add_argument("--no-results", action="store_true", help="record nothing")
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
        "--device-memory",
        type=gigabytes,
        metavar="GB",
        help="memory a shared pass may fill (default: the device's), as pytest --device-memory",
    )
    gate.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="measure the selected cases on a Ray cluster (alone: a local Ray on 127.0.0.1), as pytest --ray",
    )
    gate.add_argument(
        "--rehearse",
        action="store_true",
        help="dry-run offline on the hub stand-ins: exit 0 when every selected case ran end to end with the SAE "
        "(verdicts go to --table but, on miniatures, do not set the exit code)",
    )
    gate.set_defaults(run=_gate)


def _cases(args: argparse.Namespace) -> int:
    """The registered cases (a sweep's expanded ones with --sweep) as a table: id, SAE, model, hook."""
    import pandas as pd

    from sae_bench.cases import SHIPPED_CASES, cases_selected_by, load_registries

    registry = load_registries((SHIPPED_CASES, *args.cases_dir))
    chosen = registry.sweep_cases(registry.sweep(args.sweep)) if args.sweep is not None else list(registry)
    if args.cases:
        selected = set(cases_selected_by(registry, args.cases))
        chosen = [case for case in chosen if case.id in selected]
    table = pd.DataFrame(
        [{"case": c.id, "sae": c.sae, "model": c.model, "hook": c.hook, "groups": ",".join(c.groups)} for c in chosen],
        columns=["case", "sae", "model", "hook", "groups"],
    )
    _write_table(table, args.format)
    print(f"{len(table)} cases", file=sys.stderr)
    return EXIT_OK


def _fetch(args: argparse.Namespace) -> int:
    """Download what the selected hub cases need (models, SAEs, artifacts, dataset records); --dry-run lists it."""
    import pandas as pd

    from sae_bench.fetch import fetch, human_size

    cases = _selected_cases(args, "fetch")
    hub = [case for case in cases if case.tier == "hub"]
    print(f"{len(cases)} cases selected, {len(hub)} of them hub cases (zoo cases need nothing)", file=sys.stderr)
    downloads, problems = fetch(hub, dry_run=args.dry_run)
    rows = [{"what": d.what, "cases": len(d.cases), "size": human_size(d.size), "status": d.status} for d in downloads]
    _write_table(pd.DataFrame(rows, columns=["what", "cases", "size", "status"]), "md")
    known = [d.size for d in downloads if d.size is not None]
    verb = "to fetch" if args.dry_run else "fetched"
    print(f"{human_size(sum(known))} {verb} (sizes the hub states; datasets: once streamed)", file=sys.stderr)
    for problem in problems:
        print(f"not fetched: {problem}", file=sys.stderr)
    return EXIT_BAD_INPUT if problems else EXIT_OK


def _selected_cases(args: argparse.Namespace, command: str) -> list:
    """The cases of -k / --case-id / --sweep (at least one), from the shipped and the user's case files."""
    from sae_bench.cases import SHIPPED_CASES, cases_selected_by, load_registries

    if not (args.k or args.case_id or args.sweep):
        raise BadInput(f'{command}: say which cases: -k EXPR (e.g. -k "gemma-3-270m"), --case-id ID or --sweep NAME')
    registry = load_registries((SHIPPED_CASES, *args.cases_dir))
    chosen = {case.id for case in registry.sweep_cases(registry.sweep(args.sweep))} if args.sweep else set()
    chosen |= set(cases_selected_by(registry, args.k)) if args.k else set()
    for case_id in args.case_id:
        try:
            registry.get(case_id)
        except KeyError as err:
            raise BadInput(f"--case-id: {err.args[0]}") from None
        chosen.add(case_id)
    if not chosen:
        raise BadInput(f"{command}: -k {args.k!r} selects no case (`sae-bench cases` lists them)")
    return [case for case in registry if case.id in chosen]


def _add_selection(parser) -> None:
    parser.add_argument("-k", metavar="EXPR", help="-k expression over CASE:GROUP ids, as pytest's ('@' allowed)")
    parser.add_argument("--case-id", action="append", default=[], metavar="ID", help="a case id (repeatable)")
    parser.add_argument("--sweep", help="every case a sweep expands to")
    parser.add_argument("--cases-dir", action="append", default=[], type=Path, metavar="DIR", help="your case files")


def _plan(args: argparse.Namespace) -> int:
    """Per unit the FPE at the floor, peak memory and time (from a calibration); the packing onto N devices."""
    from sae_bench.fetch import human_size
    from sae_bench.plan import _duration, pack, plan_table, plan_units, read_calibration
    from sae_bench.ray_execution import units_of
    from sae_bench.suite import check_device

    check_device(args.device, here=False)  # a plan is for a device, not necessarily this machine's
    cases = _selected_cases(args, "plan")
    calibration = read_calibration(args.calibration, args.device)
    memory = None if args.gpu_memory is None else args.gpu_memory * 1e9
    plans = plan_units(units_of(cases), calibration, memory)
    _write_table(plan_table(plans), "md")
    fpe = sum(p.fpe for p in plans if p.fpe is not None)
    passes = sum(p.passes for p in plans)
    print(f"{len(cases)} cases in {len(plans)} units ({passes} passes); {fpe:.0f} FPE at the floor", file=sys.stderr)
    for plan in plans:
        if memory is not None and plan.peak_bytes is not None and plan.peak_bytes > memory:
            fix = "lower its batch_size or use a bigger device"
            print(f"does not fit {args.gpu_memory:g} GB: {plan.cases[0].id} (peak {human_size(plan.peak_bytes)}); "
                  f"{fix}", file=sys.stderr)  # fmt: skip
    if calibration is None:
        loads, _ = pack(plans, args.gpus, memory, by="work")
        if sum(loads) and args.gpus > 1:
            print(
                f"on {args.gpus} device(s): the busiest carries {max(loads) / sum(loads):.0%} of the work "
                f"({sum(loads) / max(loads):.2g}x faster than one device)",
                file=sys.stderr,
            )
        print(
            f"no time estimate: run `sae-bench calibrate --device {args.device}` on the device first", file=sys.stderr
        )
        return EXIT_OK
    loads, _ = pack(plans, args.gpus, memory)
    print(
        f"on {args.gpus} device(s) like '{calibration['device']}'"
        + (f" with {args.gpu_memory:g} GB" if memory else "")
        + f": {_duration(max(loads))} wall, {sum(loads) / 3600:.3g} device-hours",
        file=sys.stderr,
    )
    return EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    from sae_bench.plan import calibrate
    from sae_bench.suite import check_device

    check_device(args.device)  # calibration times this machine's device
    result, path = calibrate(args.device)
    print(f"{result['device']}: {result['seconds_per_param_token']:.3e} s per parameter-token ({result['model']})")
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


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
    plan.set_defaults(run=_plan)
    calibrate = commands.add_parser("calibrate", help="measure this device's forward speed, for `sae-bench plan`")
    calibrate.add_argument("--device", default="cpu")
    calibrate.set_defaults(run=_calibrate)


def _add_fetch_command(commands) -> None:
    fetch = commands.add_parser(
        "fetch", help="download what the selected hub cases need (models, SAE folders, artifacts, dataset records)"
    )
    _add_selection(fetch)
    fetch.add_argument("--dry-run", action="store_true", help="list what would be fetched, with sizes; fetch nothing")
    fetch.set_defaults(run=_fetch)


def _add_cases_command(commands) -> None:
    cases = commands.add_parser("cases", help="list the registered cases (a sweep's expanded cases with --sweep)")
    cases.add_argument("--sweep", help="only the cases this sweep expands to")
    cases.add_argument("--cases", help="-k expression over CASE:GROUP ids ('@' allowed)")
    cases.add_argument("--cases-dir", action="append", default=[], type=Path, metavar="DIR", help="your case files too")
    cases.add_argument("--format", choices=("md", "csv"), default="md")
    cases.set_defaults(run=_cases)


def _add_expectation_commands(commands) -> None:
    group = commands.add_parser("expectations", help="expectation files").add_subparsers(
        dest="expectations_command", required=True
    )
    published = group.add_parser("published", help="write the hub cases' expectations from the published results")
    published.add_argument(
        "--root", type=Path, help="expectations folder to write (default in a checkout: its expectations/)"
    )
    published.set_defaults(run=_write_published)


def _results(args: argparse.Namespace):
    from sae_bench.results_db import ResultsDB, default_path, is_postgres

    location = args.results or default_path()
    if is_postgres(location):
        return ResultsDB(location, read_only=True)
    path = Path(location)
    if not path.exists():
        raise BadInput(f"no results database at {path}; run `pytest benchmarks` first (or pass --results PATH)")
    return ResultsDB(path, read_only=True)


def _report(args: argparse.Namespace) -> int:
    from sae_bench.report import build_report

    page = build_report(_results(args), args.out, run=args.run_id, cases=args.cases)
    print(f"wrote {page} and {args.out / 'report.md'}")
    return 0


def _write_table(table, fmt: str) -> None:
    print(table.to_csv(index=False) if fmt == "csv" else table.to_markdown(index=False, floatfmt=".6g"))


def _compare(args: argparse.Namespace) -> int:
    from sae_bench.run_history import REGRESSIONS, VANISHED, check_finished, compare_runs, previous_run

    db = _results(args)
    run = db.resolve_run(args.run_id)
    baseline = db.resolve_run(args.baseline) if args.baseline else previous_run(db, run)
    if not args.allow_partial:
        check_finished(db, baseline, run)
    table = compare_runs(db, baseline, run)
    vanished = table[table.verdict == VANISHED]
    moved = len(table) - len(vanished)
    gone = f", {len(vanished)} vanished ({vanished.case_id.nunique()} cases)" if len(vanished) else ""
    print(f"run {run} against run {baseline}: {moved} metrics moved{gone}", file=sys.stderr)
    _write_table(table, args.format)
    return EXIT_REGRESSION if table.verdict.isin(REGRESSIONS).any() else EXIT_OK


def _history(args: argparse.Namespace) -> int:
    from sae_bench.report_figures import save
    from sae_bench.run_history import history, history_figure

    table = history(_results(args), args.case, args.metric)
    _write_table(table, args.format)
    if args.out is None:  # nothing is written where the command runs unless asked
        print("pass --out FILE.png for the trend figure", file=sys.stderr)
        return EXIT_OK
    save(history_figure(table, args.case, args.metric), args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


def _add_result_commands(commands) -> None:
    results = argparse.ArgumentParser(add_help=False)
    results.add_argument(
        "--results",
        metavar="PATH|URL",
        help="results database: an SQLite file or a postgresql:// store (default: $SAE_BENCH_RESULTS, else "
        ".sae-bench/results.sqlite)",
    )
    report = commands.add_parser("report", parents=[results], help="seed-style tables and figures of a recorded run")
    report.add_argument("--run", dest="run_id", default="latest", help="run id, or latest")
    report.add_argument("--cases", help="-k style expression selecting cases ('@' allowed)")
    report.add_argument("--out", type=Path, required=True, help="folder for report.html, report.md and the PNGs")
    report.set_defaults(run=_report)
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
    compare.set_defaults(run=_compare)
    hist = commands.add_parser(
        "history", parents=[results], help="one metric of one case across runs (and, with --out, its trend as a PNG)"
    )
    hist.add_argument("--case", required=True, help="case id")
    hist.add_argument("--metric", required=True, help="metric name")
    hist.add_argument("--format", choices=("md", "csv"), default="md")
    hist.add_argument("--out", type=Path, help="write the trend figure (PNG) here")
    hist.set_defaults(run=_history)


PYTEST_EXIT = {0: EXIT_OK, 1: EXIT_REGRESSION, 2: EXIT_INTERRUPTED}
"""pytest's exit codes in the suite's terms; everything else (internal error, usage error, no test selected) is 2."""


def run_suite(pytest_args: list[str]) -> int:
    """`sae-bench run ARGS`: the benchmark suite, wherever the package is (`pytest benchmarks ARGS` in a checkout,
    the installed copy otherwise), with the suite's exit codes."""
    import pytest

    from sae_bench.shipped import in_checkout, shipped

    benchmarks = shipped("benchmarks")
    target = [str(benchmarks)]
    if not in_checkout():  # the installed suite's own ini (its options plugin, markers, no cache in the package)
        target += ["-c", str(benchmarks / "pytest.ini"), "--rootdir", str(benchmarks)]
    code = int(pytest.main(target + pytest_args))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("sae-bench run: no test selected (check -k, -m or --case-id)", file=sys.stderr)
    return PYTEST_EXIT.get(code, EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-bench",
        description="Does an SAE still work when spliced into a model it was not trained on? Exit codes: 0 ok, "
        "1 regression, 2 bad input, 130 interrupted.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("metrics", help="list every reported metric with its definition").set_defaults(
        run=_print_metrics
    )
    commands.add_parser("versions", help="print the versions the numbers depend on").set_defaults(run=_print_versions)
    _add_zoo_commands(commands)
    _add_expectation_commands(commands)
    _add_gate_command(commands)
    _add_cases_command(commands)
    _add_fetch_command(commands)
    _add_plan_commands(commands)
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
        return run_suite(argv[1:])
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    keep_freed_memory()
    try:
        return args.run(args)
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
