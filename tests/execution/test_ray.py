"""`--ray`: a zoo family measured on a real two-node Ray cluster on 127.0.0.1 gives exactly the local numbers, and
the same forward passes at the floor, even when a worker is killed mid-task (Ray retries its unit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("ray")

from tests.ray_cluster import running_tasks  # noqa: E402

pytestmark = pytest.mark.full  # the full tier only: `make test-fast` leaves this file out

REPO = Path(__file__).resolve().parents[2]
SELECTION = ["-m", "zoo", "-k", "tiny-qwen2 and not universality and not similarity"]


def _pytest(*args: str, background: bool = False):
    from tests.ray_cluster import ray_env

    command = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "--benchmark-disable", "-q"]
    command += ["--no-results", *SELECTION, *args]
    env = ray_env()
    if background:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def cluster():
    from tests.ray_cluster import two_node_cluster

    with two_node_cluster() as address:
        yield address


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
    table = tmp_path_factory.mktemp("local") / "verdicts.csv"
    run = _pytest("--verdict-table", str(table))
    assert run.returncode == 0, run.stdout[-3000:]
    return pd.read_csv(table), run.stdout


def _fpe(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("| total"))


def test_a_zoo_family_on_a_two_node_cluster_equals_the_local_run_even_when_a_worker_is_killed(
    cluster, local_table, tmp_path
):
    """A worker running a unit is killed mid-task: Ray retries the unit, and every value, verdict and counted
    forward pass still equals the local run's."""
    table = tmp_path / "verdicts.csv"
    run = _pytest("--ray", cluster, "--verdict-table", str(table), background=True)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and run.poll() is None:
        found = running_tasks("measure_unit")
        if found:
            killed = found[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    out, _ = run.communicate(timeout=900)
    assert killed is not None, "no task was seen running"
    assert run.returncode == 0, out[-3000:]
    local, local_out = local_table
    pd.testing.assert_frame_equal(pd.read_csv(table), local)  # every value, bit for bit, and every verdict
    assert _fpe(out) == _fpe(local_out)  # the counted forward passes, at the floor, as locally


def test_ctrl_c_cancels_the_clusters_tasks_and_records_the_run_as_interrupted(cluster, tmp_path):
    from sae_bench.results_store.database import ResultsDB

    results = tmp_path / "results.sqlite"
    command = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "--benchmark-disable", "-q"]
    command += [*SELECTION, "--ray", cluster, "--results", str(results)]
    from tests.ray_cluster import ray_env

    run = subprocess.Popen(
        command, cwd=REPO, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if running_tasks("measure_unit"):
            run.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 2, out[-3000:]  # pytest's "interrupted"
    db = ResultsDB(results, read_only=True)
    assert db.run_status(int(db.runs().id.iloc[-1])) == "interrupted"
    time.sleep(3)
    assert running_tasks("measure_unit") == [], "a cancelled task is still running"


def test_a_unit_out_of_memory_fails_only_its_cases_naming_the_unit_its_estimate_and_the_fix(monkeypatch):
    import torch

    from sae_bench.cases.registry import SHIPPED_CASES, load_registry
    from sae_bench.execution.executor import CaseExecutor
    from sae_bench.execution.ray_units import measure_unit, unit_memory_bytes, units_of

    def out_of_memory(self, case, subsets=0):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    registry = load_registry(SHIPPED_CASES)
    [unit] = units_of([registry.get("tiny-gemma/base-sae@base"), registry.get("tiny-gemma/it-sae@base")])
    monkeypatch.setattr(CaseExecutor, "measure", out_of_memory)
    result = measure_unit(unit, "cpu", 1, unit_memory_bytes(unit))
    assert set(result.failures) == {(case.id, case.sae) for case in unit} and not result.values
    message = next(iter(result.failures.values()))
    assert "ran out of memory" in message and "estimated peak" in message and "MB" in message
    assert "lower batch_size" in message


def test_a_rehearsal_refuses_ray_before_anything_runs():
    """The rehearsal's stand-ins are set up in the pytest process, not on a cluster."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-m", "hub", "--rehearse", "--ray", "-k", "gemma-2-2b", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 4 and "drop --ray" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
