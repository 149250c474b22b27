"""The `gate` command's two modes once the command line has chosen one (`sae_bench.cli` checks the options of
each mode and sets a rehearsal up first): one SAE against the expectations of the cases it replaces, or a release
against the one it replaces."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path

from sae_bench.cases.registry import SHIPPED_CASES, load_registries
from sae_bench.engine.latent_matching import MATCH_THRESHOLD
from sae_bench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_REGRESSION, BadInput
from sae_bench.gates.release import DEFAULTS, check_settings, junit_xml, load_releases, paired_release_gate, sweep_plan
from sae_bench.gates.single import GateRequest, run_gate
from sae_bench.option_values import output_problem
from sae_bench.reports.figures import forest, save
from sae_bench.results_store.database import CaseMeasurement, ResultsDB, default_path
from sae_bench.sources.loading import source_fingerprint
from sae_bench.suite.runner import PACKAGES


def single(args: argparse.Namespace) -> int:
    """The single-SAE gate, its options checked (`sae_bench.cli`): the suite's cases with the new SAE."""
    return run_gate(
        GateRequest(
            args.sae,
            args.cases,
            junit=args.junit,
            table=args.table,
            rehearse=args.rehearse,
            cases_dirs=tuple(args.cases_dir),
            results=args.results,
            no_results=args.no_results,
            ray=args.ray,
            device_memory_gb=args.device_memory,
            dtype=args.dtype,
        ),
        registry=args.registry,
    )


def release(args: argparse.Namespace) -> int:
    """The paired release gate: exit 0 when every shared id is shown not worse than the baseline by more than its
    margin on every model, 1 on a regression, an inconclusive verdict at the budget or a removed id. Everything
    it is told is checked before anything runs; it records its run like every gate."""
    if not (args.release and args.baseline and args.sweep):
        raise BadInput("gate: a release gate needs --release NEW, --baseline OLD and --sweep NAME")
    for name, default in DEFAULTS.items():
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    check_settings(
        rows_per_unit=args.rows_per_unit, start_rows=args.start_rows, budget_rows=args.budget_rows, alpha=args.alpha
    )
    if problem := output_problem({"--junit": args.junit, "--table": args.table}) or folder_problem(args.report):
        raise BadInput(problem)
    plan = sweep_plan(load_registries((SHIPPED_CASES, *args.cases_dir)), args.sweep)
    new, old = load_releases(plan, args.release, args.baseline)
    record = ReleaseRecord.open(args, plan, new, old)
    try:
        verdicts = paired_release_gate(
            plan,
            new,
            old,
            rows_per_unit=args.rows_per_unit,
            start_rows=args.start_rows,
            budget_rows=args.budget_rows,
            alpha=args.alpha,
            dtype=args.dtype,
        )
    except BaseException as err:
        record.finish(EXIT_INTERRUPTED if isinstance(err, KeyboardInterrupt) else EXIT_BAD_INPUT)
        raise
    code = EXIT_REGRESSION if verdicts.regressed(allow_removed=args.allow_removed) else EXIT_OK
    write_release_outputs(args, plan, verdicts)
    record.measurements(plan, verdicts, args.dtype or plan.case.dtype)
    record.finish(code)
    return code


def folder_problem(folder: str | None) -> str | None:
    """A --report folder that cannot be made: a file in its place, or under a file."""
    if folder is None:
        return None
    path = Path(folder).absolute()
    blocking = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        return f"--report {folder}: {blocking} is a file; give a folder path"
    return None


def write_release_outputs(args: argparse.Namespace, plan, verdicts) -> None:
    """The verdict table (stdout, --table), the JUnit file, the forest plot, and the run's summary on stderr."""
    table = verdicts.table
    if args.table:
        Path(args.table).write_text(
            table.to_csv(index=False) if args.table.endswith(".csv") else table.to_markdown(index=False) + "\n"
        )
    if args.junit:
        Path(args.junit).write_text(junit_xml(plan, verdicts, allow_removed=args.allow_removed))
    print(table.to_markdown(index=False, floatfmt=".4g"))
    latents = verdicts.latent_table()
    print(
        f"\nlatents of each id, old to new (mutual nearest decoder directions, cosine >= {MATCH_THRESHOLD}; dead: "
        "never fired on the gate's rows, or a zero decoder row):\n" + latents.to_markdown(index=False, floatfmt=".4g")
    )
    if args.report:
        Path(args.report).mkdir(parents=True, exist_ok=True)
        title = f"{args.release} against {args.baseline} (sweep {plan.name}, {verdicts.rows_used} rows per model)"
        print(f"wrote {save(forest(table, title), Path(args.report) / 'forest.png')}", file=sys.stderr)
        latents.to_csv(Path(args.report) / "latents.csv", index=False)
        print(f"wrote {Path(args.report) / 'latents.csv'}", file=sys.stderr)
    for kind, ids in (("added", verdicts.added), ("removed", verdicts.removed)):
        if ids:
            print(f"{kind} in --release: {', '.join(ids)}", file=sys.stderr)
    counts = table.verdict.value_counts().to_dict()
    print(
        f"sae-bench gate: {verdicts.rows_used} rows per model, verdicts {counts} (alpha {args.alpha})", file=sys.stderr
    )


class ReleaseRecord:
    """The release gate's run in the results database (none with --no-results): the command line, both releases'
    specs and per-id sha256, each judged difference, and the exit status."""

    def __init__(self, db, run: int | None):
        self.db, self.run = db, run

    @classmethod
    def open(cls, args: argparse.Namespace, plan, new, old) -> ReleaseRecord:
        if args.no_results:
            return cls(None, None)
        db = ResultsDB(args.results or default_path())
        releases = {r.option: {"source": r.source, "sha256": r.sha256} for r in (new, old)}
        selection = json.dumps({"command": " ".join(["sae-bench", *sys.argv[1:]]), "sweep": plan.name} | releases)
        versions = {p: version(p) for p in PACKAGES}
        return cls(db, db.start_run(selection=selection, device="cpu", git_commit=None, versions=versions))

    def measurements(self, plan, verdicts, dtype: str) -> None:
        if self.db is None:
            return
        for (sae_id, model), rows in verdicts.table.groupby(["id", "model"], sort=False):
            spec = plan.models[model]
            self.db.record(
                self.run,
                CaseMeasurement(
                    f"{plan.name}:{sae_id}@{model}",
                    "paired-release",
                    {f"{m}_paired_difference": v for m, v in zip(rows.metric, rows.difference, strict=True)},
                    {},
                    rows.assign(
                        metric=rows.metric + "_paired_difference", expected=None, threshold=None, direction=None
                    )[["metric", "expected", "threshold", "direction", "verdict"]],
                    verdicts.new.specs[sae_id],
                    verdicts.new.sha256[sae_id],
                    spec,
                    source_fingerprint(spec),
                    verdicts.rows_used * plan.context,
                    f"baseline {verdicts.old.specs[sae_id]} (sha256 {verdicts.old.sha256[sae_id]})",
                    dtype,
                ),
            )

    def finish(self, code: int) -> None:
        if self.db is not None:
            self.db.finish_run(self.run, {EXIT_OK: 0, EXIT_REGRESSION: 1, EXIT_INTERRUPTED: 2}.get(code, 3))
