"""Each case's expectation file as a run uses it: where it lives (`--expectations-dir`, the shipped folder, or the
`expectations/` folder beside a user's case file), each file parsed once a run (a sweep's file holds all its cases),
and written atomically under its lock, re-read fresh there so that a parallel writer's cases are kept."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sae_bench.cases.registry import SHIPPED_CASES, Case, Registry
from sae_bench.expectations import files
from sae_bench.expectations.rules import (
    ExpectationError,
    ExpectationFile,
    bundle_json,
    read_bundle,
    read_expectations,
    staleness,
)
from sae_bench.shipped import shipped

SHIPPED_EXPECTATIONS = shipped("expectations")

Parsed = ExpectationFile | dict[str, ExpectationFile] | None
"""What one path holds: a case's file, a sweep's cases by id, or nothing (no file yet)."""


class CaseExpectations:
    """The expectation files of a run's cases, each read from disk once (until this run writes it)."""

    def __init__(self, override: Path | None = None):
        self.override = override
        self._parsed: dict[Path, Parsed] = {}
        self.reads: dict[Path, int] = {}
        """How often each file was read from disk this run (once, and again only to write it)."""

    def root(self, case: Case) -> Path:
        """Where a case's expectation files live: the override, else the shipped folder for a shipped case, else
        the `expectations/` folder beside the user's case file."""
        if self.override is not None:
            return self.override
        folder = Path(case.file).resolve().parent
        return SHIPPED_EXPECTATIONS if folder == SHIPPED_CASES.resolve() else folder / "expectations"

    def path(self, case: Case) -> Path:
        return case.expectation_path(self.root(case))

    def read(self, case: Case, *, fresh: bool = False) -> ExpectationFile | None:
        """The case's expectations (its own file, or its entry in its sweep's file), None if absent; `fresh` reads
        the disk again (under the file's lock, before writing it)."""
        parsed = self._file(self.path(case), sweep=bool(case.sweep), fresh=fresh)
        return parsed.get(case.id) if isinstance(parsed, dict) else parsed

    def _file(self, path: Path, *, sweep: bool, fresh: bool = False) -> Parsed:
        if fresh or path not in self._parsed:
            self._parsed.pop(path, None)  # a file that fails to parse is read (and fails) again
            self.reads[path] = self.reads.get(path, 0) + 1
            self._parsed[path] = None if not path.exists() else read_bundle(path) if sweep else read_expectations(path)
        return self._parsed[path]

    def write(self, case: Case, file: ExpectationFile) -> None:
        """Write the case's expectations atomically (into its sweep's file, beside its other cases); the caller holds
        `files.locked(path)` and has read the file `fresh` under it, so the other cases are as the disk holds them."""
        path = self.path(case)
        if not case.sweep:
            files.write_atomic(path, file.to_json())
            self._parsed[path] = file
            return
        cases = (self._file(path, sweep=True) or {}) | {case.id: file}
        files.write_atomic(path, bundle_json(case.sweep, cases))
        self._parsed[path] = cases

    def problems(self, registry: Registry, case_ids: Iterable[str]) -> list[str]:
        """One message per expectation file of these cases that cannot be used, read before any case runs."""
        problems, seen = [], set()
        for case_id in dict.fromkeys(case_ids):
            case = registry.get(case_id)
            path = self.path(case)
            if path in seen or not path.exists():
                continue
            seen.add(path)
            try:
                found = self.read(case)
            except ExpectationError as err:
                problems.append(f"{err}. Fix the file, or delete it to measure the case afresh")
                continue
            except (OSError, UnicodeDecodeError) as err:
                problems.append(f"{path}: cannot be read ({err}). Fix its permissions or content")
                continue
            if found is not None and found.case != case_id:
                problems.append(
                    f"{path}: case: the file is for {found.case!r} but sits at the path of {case_id!r}. Move it, "
                    "or delete it to measure the case afresh"
                )
        return problems

    def stale(
        self, registry: Registry, case_ids: Iterable[str], run_dtype: str | None = None
    ) -> list[tuple[Path, str]]:
        """(file, line) per expected value of these cases' groups that cannot judge this run (`rules.staleness`:
        another definition of its metric, or another dtype than its case declares), saying why. `run_dtype`: the
        run's --dtype (None: each case's own). Call after `problems` found none."""
        lines = []
        for case_id in dict.fromkeys(case_ids):
            case = registry.get(case_id)
            found = self.read(case)
            if found is None:
                continue
            names = dict.fromkeys(name for group in case.groups for name in case.metrics(group))
            for name in (n for n in names if n in found.metrics):
                why = staleness(found, name, declared=case.dtype, run=run_dtype or case.dtype)
                if why is None:
                    continue
                fix = "`sae-bench metrics`" if why.startswith("under") else "--update-expectations measures it again"
                lines.append((self.path(case), f"{case_id}: {name} expects {found.metrics[name].value} {why} ({fix})"))
        return lines

    def stale_temporaries(self, registered: Iterable[Case]) -> list[Path]:
        """Temporary files a killed writer left in any folder a registered case reads its expectations from."""
        roots = sorted({self.root(case) for case in registered})
        return [path for root in roots if root.is_dir() for path in files.stale_temporaries(root)]

    def orphans(self, registered: Iterable[Case]) -> list[str]:
        """Expectation files that no registered case reads, in every folder a registered case reads from, and
        entries of a sweep's file whose case the sweep no longer expands to."""
        registered = list(registered)
        found: list[str] = []
        for root in sorted({self.root(case) for case in registered}):
            if root.is_dir():
                paths = (self.path(c) for c in registered if self.root(c) == root)
                found += [str(path) for path in files.orphans(root, paths)]
        bundles: dict[Path, set[str]] = {}
        for case in registered:
            if case.sweep:
                bundles.setdefault(self.path(case), set()).add(case.id)
        for path, known in bundles.items():
            if path.exists():
                try:
                    entries = self._file(path, sweep=True)
                except ExpectationError:
                    continue  # said when a selected case reads it
                found += [f"{path}: cases.{case_id}" for case_id in sorted(set(entries) - known)]
        return found
