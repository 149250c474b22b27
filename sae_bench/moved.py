"""Module paths of version 0.1, importable for one more release: 0.2 moved the flat modules into subpackages by role
(docs/design.md §2). An old path gives the module at its new path, the same object, with a DeprecationWarning that
names the new one; `sae_bench.cases`, `.sources`, `.expectations`, `.execution` and `.suite` became packages and hand
on the names their module held. Everything here goes in 0.3 (CHANGELOG.md)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REMOVED_IN = "0.3"

MOVED_MODULES = {
    "sae_bench.allocator": "sae_bench.engine.allocator",
    "sae_bench.backends": "sae_bench.engine.backends",
    "sae_bench.chat": "sae_bench.sources.chat",
    "sae_bench.claims": "sae_bench.cases.claims",
    "sae_bench.data": "sae_bench.engine.token_batches",
    "sae_bench.drift": "sae_bench.engine.drift",
    "sae_bench.eval_config": "sae_bench.engine.eval_config",
    "sae_bench.evaluate": "sae_bench.engine.evaluate",
    "sae_bench.expectation_store": "sae_bench.expectations.files",
    "sae_bench.fetch": "sae_bench.sources.fetch",
    "sae_bench.forward_cost": "sae_bench.engine.forward_cost",
    "sae_bench.gate": "sae_bench.gates.single",
    "sae_bench.hf_continuation": "sae_bench.engine.hf_continuation",
    "sae_bench.hub": "sae_bench.sources.hub",
    "sae_bench.kissane_prompts": "sae_bench.sources.kissane_prompts",
    "sae_bench.memory": "sae_bench.execution.memory",
    "sae_bench.metrics": "sae_bench.engine.metrics",
    "sae_bench.outliers": "sae_bench.engine.outliers",
    "sae_bench.plan": "sae_bench.execution.plan",
    "sae_bench.prefix": "sae_bench.engine.prefix",
    "sae_bench.pytest_options": "sae_bench.suite.pytest_options",
    "sae_bench.ray_execution": "sae_bench.execution.ray_units",
    "sae_bench.release_gate": "sae_bench.gates.release",
    "sae_bench.report": "sae_bench.reports.seed_report",
    "sae_bench.report_figures": "sae_bench.reports.figures",
    "sae_bench.results": "sae_bench.engine.transfer_report",
    "sae_bench.results_db": "sae_bench.results_store.database",
    "sae_bench.run_history": "sae_bench.results_store.history",
    "sae_bench.sae_training": "sae_bench.tooling.sae_training",
    "sae_bench.selection": "sae_bench.cases.selection",
    "sae_bench.splicing": "sae_bench.engine.splicing",
    "sae_bench.universality": "sae_bench.engine.universality",
    "sae_bench.published": "sae_bench.expectations.published",
    "sae_bench.rehearsal": "sae_bench.sources.rehearsal",
    "sae_bench.zoo": "sae_bench.sources.zoo",
    "sae_bench.zoo.artifacts": "sae_bench.sources.zoo.artifacts",
    "sae_bench.zoo.build": "sae_bench.tooling.zoo_build.build",
    "sae_bench.zoo.card": "sae_bench.tooling.zoo_build.card",
    "sae_bench.zoo.corpus": "sae_bench.tooling.zoo_build.corpus",
    "sae_bench.zoo.lm_training": "sae_bench.tooling.zoo_build.lm_training",
    "sae_bench.zoo.recipes": "sae_bench.sources.zoo.recipes",
    "sae_bench.zoo.tokenizer": "sae_bench.sources.zoo.tokenizer",
}
NOW_PACKAGES = {
    "sae_bench.cases": "sae_bench.cases.registry",
    "sae_bench.execution": "sae_bench.execution.executor",
    "sae_bench.expectations": "sae_bench.expectations.rules",
    "sae_bench.sources": "sae_bench.sources.loading",
    "sae_bench.suite": "sae_bench.suite.runner",
}


def new_name(old: str) -> str | None:
    """Where the module `old` lives now (a moved package's submodules move with it), or None if it did not move."""
    if old in MOVED_MODULES:
        return MOVED_MODULES[old]
    parent, _, leaf = old.rpartition(".")
    moved_parent = new_name(parent) if parent.startswith("sae_bench.") else None
    return f"{moved_parent}.{leaf}" if moved_parent else None


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path goes in {REMOVED_IN}", DeprecationWarning, stacklevel=3)


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module at its new path (one module object, whichever path imported it)."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_name(spec.name)
        _warn(spec.name, new)
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system set the alias's spec on the module: give it its own back (pickling, reload and Ray
        # find a module by its spec's name)
        module.__spec__ = self._specs.pop(module.__spec__.name)


def install() -> None:
    """Put the finder first on sys.meta_path, once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())


def hand_on_names(package: str) -> Callable[[str], object]:
    """A package's module `__getattr__` giving the names its 0.1 module held (from that module's new home), with a
    DeprecationWarning; a submodule's name is left to the import system."""
    target = NOW_PACKAGES[package]
    folder = Path(sys.modules[package].__file__).parent

    def __getattr__(name: str) -> object:
        if name.startswith("__") or (folder / f"{name}.py").exists() or (folder / name).is_dir():
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(target), name)  # AttributeError for a name it never held
        _warn(f"{package}.{name}", f"{target}.{name}")
        return value

    return __getattr__
