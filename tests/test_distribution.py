"""The gate from any repository: the built wheel carries the cases, the expectations and the zoo, and installed into
a fresh environment it gates a zoo SAE and runs a user's own case folder from an empty folder, offline, writing
nothing but the outputs it is given (and its cache, which the test points into its own folder)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.full  # the full tier only: `make test-fast` leaves this file out

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "docs" / "gate-ci.sh"
CASES = "tiny-qwen2/base-sae@chat and kl and not filtered and not rollout and not user"
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
USER_CASES = """family = "my-zoo"
description = "A publisher's own pair: the zoo's tiny Qwen2 base SAE on its chat model, few tokens."

[saes]
base-sae = "zoo:tiny-qwen2/base-sae"

[models]
chat = "zoo:tiny-qwen2/chat"

[[case]]
sae = "base-sae"
model = "chat"
hook = "blocks.2.hook_resid_pre"
dataset = "zoo:heldout"
tokens = 2048
context = 128
batch_size = 8
groups = ["reconstruction"]
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel built from a copy of this tree, installed (no index, no dependencies) into a fresh venv whose other
    packages are this environment's; a home, a cache and an empty working folder of its own."""
    root = tmp_path_factory.mktemp("distribution")
    source, wheels = root / "source", root / "wheels"
    shutil.copytree(REPO, source, ignore=IGNORED)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=600)
    [wheel] = wheels.glob("*.whl")
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", str(root / "venv")], check=True, timeout=300)
    site = next((root / "venv" / "lib").glob("python3*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., already here
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=600)
    work, home = root / "work", root / "home"
    work.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SAE_BENCH_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {"PATH": f"{root / 'venv' / 'bin'}:{env['PATH']}", "HOME": str(home), "SAE_BENCH_CACHE": str(home / "c")}
    env |= {"PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PACKAGE": str(wheel)}
    return {"wheel": wheel, "work": work, "env": env, "root": root}


def run(installed, command: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=installed["work"], env=installed["env"] | env, capture_output=True, text=True, timeout=900
    )


def test_the_wheel_carries_cases_expectations_zoo_and_the_suite(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for name in (
        "benchmarks/cases/tiny-qwen2.toml",
        "benchmarks/conftest.py",
        "benchmarks/test_cases.py",
        "benchmarks/pytest.ini",
        "expectations/tiny-qwen2/base-sae@chat.json",
        "zoo/manifest.json",
        "zoo/saes/tiny-qwen2/base-sae/sae_weights.safetensors",
        "references/kissane-sae-transfer/sae_transfer_results_post.json",
    ):
        assert f"sae_bench/_shipped/{name}" in names, name
    assert not any("__pycache__" in name or name.endswith(".lock") for name in names)


def test_the_readme_recipe_gates_a_zoo_sae_from_an_empty_folder(installed):
    assert RECIPE.read_text() in (REPO / "docs" / "gates.md").read_text()  # the docs show the script this test runs
    result = run(installed, ["bash", str(RECIPE)], SAE="zoo:tiny-qwen2/base-sae", CASES=CASES, OUT="out")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ok: zoo:tiny-qwen2/base-sae" in result.stdout
    out = installed["work"] / "out"
    assert sorted(p.name for p in installed["work"].iterdir()) == ["out"]  # nothing else in the folder it ran in
    assert {"gate.xml", "gate.md", "results.sqlite", "report"} <= {p.name for p in out.iterdir()}
    assert "zoo:tiny-qwen2/base-sae" in (out / "gate.md").read_text() and (out / "report" / "report.html").is_file()
    shutil.rmtree(out)


def test_the_recipe_fails_a_broken_sae_and_bad_input(installed, tmp_path):
    from sae_bench.sources.loading import load_sae

    sae = load_sae("zoo:tiny-qwen2/base-sae")
    with torch.no_grad():
        sae.W_dec.copy_(sae.W_dec[torch.randperm(sae.W_dec.shape[0], generator=torch.Generator().manual_seed(0))])
    sae.save_model(tmp_path / "broken")
    broken = run(installed, ["bash", str(RECIPE)], SAE=str(tmp_path / "broken"), CASES=CASES, OUT=str(tmp_path / "o"))
    assert broken.returncode == 1, broken.stdout[-3000:] + broken.stderr[-3000:]
    assert "regression" in (tmp_path / "o" / "gate.md").read_text()
    missing = run(installed, ["bash", str(RECIPE)], SAE=str(tmp_path / "nope"), CASES=CASES, OUT=str(tmp_path / "o2"))
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    assert list(installed["work"].iterdir()) == []


def test_a_users_own_case_folder_runs_beside_the_shipped_cases(installed, tmp_path):
    cases = tmp_path / "my-cases"
    cases.mkdir()
    (cases / "my-zoo.toml").write_text(USER_CASES)
    command = ["sae-bench", "run", "--cases-dir", str(cases), "--case-id", "my-zoo/base-sae@chat", "-q"]
    first = run(installed, command)
    assert first.returncode == 1 and "wrote new reconstruction expectations" in first.stdout, first.stdout[-3000:]
    written = cases / "expectations" / "my-zoo" / "base-sae@chat.json"
    assert written.is_file()
    second = run(installed, command)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert list(installed["work"].iterdir()) == []  # nothing written where it ran
    results = Path(installed["env"]["SAE_BENCH_CACHE"]) / "results.sqlite"
    with sqlite3.connect(results) as connection:
        registries = {r for (r,) in connection.execute("SELECT DISTINCT registry FROM measurements")}
    assert any(str(cases) in registry and "(git none)" in registry for registry in registries), registries
    shipped = run(installed, ["sae-bench", "run", "--case-id", "tiny-qwen2/base-sae@chat", "-q", "-k", "kl"])
    assert shipped.returncode == 0, shipped.stdout[-3000:] + shipped.stderr[-3000:]
