"""The 0.1 module paths still import for one release (`sae_bench.moved`), as the same module objects, with a warning
that names the new path; the public API in `sae_bench.__init__` resolves, name by name."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
import warnings

import pytest

import sae_bench
from sae_bench import moved
from sae_bench.engine import metrics
from sae_bench.engine.outliers import OutlierPolicy


def forget(old: str) -> None:
    """Drop an old path from sys.modules, so that importing it goes through the finder again."""
    sys.modules.pop(old, None)


@pytest.mark.parametrize("old", sorted(moved.MOVED_MODULES))
def test_each_old_path_is_the_new_module(old):
    forget(old)
    with pytest.warns(DeprecationWarning, match=moved.MOVED_MODULES[old].replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(moved.MOVED_MODULES[old])
    assert module.__spec__.name == moved.MOVED_MODULES[old]  # its own spec, not the alias's


def test_a_moved_packages_submodule_moves_with_it():
    assert moved.new_name("sae_bench.rehearsal.stand_ins") == "sae_bench.sources.rehearsal.stand_ins"
    assert moved.new_name("sae_bench.zoo.build") == "sae_bench.tooling.zoo_build.build"
    assert moved.new_name("sae_bench.engine.metrics") is None
    assert moved.new_name("sae_bench.cli") is None


def test_an_old_from_import_gives_the_same_objects():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    from sae_bench.metrics import l0\nexcept DeprecationWarning as w:\n    print(w)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "sae_bench.metrics moved to sae_bench.engine.metrics; the old path goes in 0.3" in run.stdout, run.stderr
    forget("sae_bench.metrics")
    with pytest.warns(DeprecationWarning):
        from sae_bench.metrics import l0  # noqa: PLC0415 (the old path under test)
    assert l0 is metrics.l0


def test_a_package_that_was_a_module_hands_on_its_names():
    with pytest.warns(DeprecationWarning, match=r"sae_bench\.cases\.Case moved to sae_bench\.cases\.registry\.Case"):
        from sae_bench.cases import Case  # noqa: PLC0415 (the old path under test)
    assert Case is importlib.import_module("sae_bench.cases.registry").Case
    with pytest.raises(ImportError):
        from sae_bench.cases import no_such_name  # noqa: F401, PLC0415
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a submodule is the import system's: no warning
        from sae_bench.sources import kissane_prompts  # noqa: PLC0415

        assert kissane_prompts.__name__ == "sae_bench.sources.kissane_prompts"


@pytest.mark.parametrize("name", sae_bench.__all__)
def test_each_public_name_resolves(name):
    assert getattr(sae_bench, name).__name__ == name
    assert name in dir(sae_bench)


def test_an_unknown_public_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'evaluate_tranfser'"):
        sae_bench.evaluate_tranfser  # noqa: B018


def test_moved_objects_pickle_under_their_new_path():
    forget("sae_bench.outliers")
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("sae_bench.outliers")
    policy = old.OutlierPolicy(threshold=30.0)
    assert pickle.loads(pickle.dumps(policy)) == OutlierPolicy(threshold=30.0)
    assert b"sae_bench.engine.outliers" in pickle.dumps(policy)


def test_importing_sae_bench_loads_nothing_heavy():
    code = "import sys, sae_bench; print(sorted(m for m in sys.modules if m in ('torch', 'pandas')))"
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
    )
    assert run.stdout.strip() == "[]", run.stderr
