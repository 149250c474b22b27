"""The executor's units as Ray tasks (`--ray [ADDRESS]`): the measuring runs on a Ray cluster, the judging,
recording and reporting stay in the pytest process.

A unit is what a local run shares work within: the transfer cases on one model, batch size and token set (any
hooks, one shared pass), joined with any paired case that reads the same kept prefix (`units_of`). Each task builds
its own `CaseExecutor` for its unit, with the driver's thread count (so its float reductions are those of a local
run and the numbers equal it), and returns every case's values, undefined reasons, per-feature vectors and
failures, and its forward-pass counts. A task declares what it needs: a
GPU when the run asks for CUDA, and memory estimated from its model's size and batch (`unit_memory_bytes`). Ray
retries a task whose worker dies (`max_retries`), and the driver records each case once; a task out of memory fails
only its unit's cases, with the unit, its estimate and the fix; Ctrl-C cancels the cluster's tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae_bench.cases.registry import CHAT_MASKS, Case
from sae_bench.engine.backends import DEFAULT_BACKEND
from sae_bench.errors import BadInput
from sae_bench.execution.executor import CaseExecutor
from sae_bench.execution.memory import unit_memory_bytes
from sae_bench.source_spec import parse_spec, source_spec
from sae_bench.sources.fetch import human_size

MAX_RETRIES = 3
"""Attempts after a worker dies mid-task (Ray's own retry of system failures)."""


def _tokenizer_of(spec: str) -> str:
    """Which tokenizer a model spec reads text with, as `CaseExecutor._token_key` tells them apart: the zoo's one
    tokenizer, a hub model's repo (or the `as=` repo whose tokenizer it takes), a folder's own."""
    if source_spec(spec).scheme == "zoo":
        return "zoo"
    if Path(spec).is_dir():
        return spec
    parsed = parse_spec(spec)
    return parsed.params.get("as", parsed.body)


def _token_key(case: Case) -> tuple:
    """What decides a case's rows, read off the case alone (`CaseExecutor._token_key` without loading a model)."""
    reads = case.model if case.mask in CHAT_MASKS else _tokenizer_of(case.base_model or case.model)
    return (case.dataset, case.tokens, case.context, case.mask, case.drop_first_token, reads, case.dtype)


def _shares(case: Case) -> list[tuple]:
    """What a case shares with others in a local run: its shared pass (model, batch size, rows, any hook) and the
    prefix of each model it reads at its hook (a paired case reads the base model's and the fine-tune's)."""
    rows = (case.batch_size, _token_key(case))
    if case.paired:
        return [("prefix", key, case.hook, *rows) for key in case.model_keys]
    return [("pass", case.model_key, *rows), ("prefix", case.model_key, case.hook, *rows)]


def units_of(cases: Iterable[Case]) -> list[list[Case]]:
    """The cases split into units that share nothing a local run would share (passes, kept prefixes): each unit,
    measured alone, does exactly the work it does within the local run, so numbers and counted forward passes are
    the local run's."""
    cases = list(cases)
    parent = list(range(len(cases)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple, int] = {}
    for i, case in enumerate(cases):
        for key in _shares(case):
            if key in owner:
                parent[root(i)] = root(owner[key])
            else:
                owner[key] = i
    units: dict[int, list[Case]] = {}
    for i, case in enumerate(cases):
        units.setdefault(root(i), []).append(case)
    return list(units.values())


@dataclass
class UnitResult:
    """What a task sends back: per case (id, SAE spec) its values and details, or its failure; forward counts."""

    values: dict[tuple, dict] = field(default_factory=dict)
    details: dict[tuple, tuple] = field(default_factory=dict)
    failures: dict[tuple, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    """sha256 of each SAE's weights, as the task loaded them (the driver need not load them, nor have the device)."""
    run: dict[str, int] = field(default_factory=dict)
    floor: dict[str, int] = field(default_factory=dict)
    n_layers: dict[str, int] = field(default_factory=dict)


def measure_unit(
    cases: list[Case],
    device: str,
    threads: int,
    memory: int | None,
    device_memory: float | None = None,
    backend: str = DEFAULT_BACKEND,
) -> UnitResult:
    """The task's body: measure one unit's cases in a fresh executor, as a local run would (`device_memory`: the
    run's --device-memory, else the task's device's own)."""
    torch.set_num_threads(threads)
    executor, result = CaseExecutor(device=device, device_memory=device_memory, backend=backend), UnitResult()
    executor.plan(cases)
    for case in cases:
        key = (case.id, case.sae)
        try:
            result.values[key] = executor.measure(case)
            undefined, vectors = executor.details(case)
            result.details[key] = (undefined, {name: tensor.cpu() for name, tensor in vectors.items()})
            result.fingerprints[case.sae] = executor.sae_fingerprint(case.sae)
        except BadInput as err:
            result.failures[key] = str(err)
        except (torch.OutOfMemoryError, MemoryError) as err:
            result.failures[key] = out_of_memory(cases, memory, err)
        executor.done(case)
    cost = executor.cost
    result.run, result.floor, result.n_layers = dict(cost.run), dict(cost.floor), dict(cost.n_layers)
    return result


def out_of_memory(unit: Sequence[Case], memory: int | None, err: BaseException) -> str:
    case = unit[0]
    return (
        f"the unit of {len(unit)} case(s) on {case.model} (batch {case.batch_size} x {case.context} tokens) ran out "
        f"of memory (estimated peak {human_size(memory)}; {err.__class__.__name__}): lower batch_size in the case "
        "file, or run it on a device with more memory"
    )


class RayUnits:
    """Runs units on a Ray cluster: `address` None starts a local one on 127.0.0.1 for this run."""

    def __init__(
        self, address: str | None, *, device: str, device_memory: float | None = None, backend: str = DEFAULT_BACKEND
    ):
        try:
            import ray
        except ImportError:
            raise BadInput("--ray needs Ray: pip install 'sae-transfer-bench[ray]' (or pip install ray)") from None
        self.ray, self.device, self.device_memory, self.started = ray, device, device_memory, False
        self.backend = backend
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                ray.init(
                    _node_ip_address="127.0.0.1",
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            self.started = True
        self.task = ray.remote(max_retries=MAX_RETRIES)(measure_unit)

    def run(self, units: list[list[Case]], progress: bool = True) -> list[tuple[list[Case], UnitResult]]:
        """Every unit's result, in order of completion; Ctrl-C cancels what is still running."""

        ray = self.ray
        threads = torch.get_num_threads()
        submitted = {}
        for unit in units:
            memory = unit_memory_bytes(unit)
            options = {"num_cpus": 1}
            if self.device.startswith("cuda"):
                options["num_gpus"] = 1
            if memory is not None:
                options["memory"] = memory
            ref = self.task.options(**options).remote(
                unit, self.device, threads, memory, self.device_memory, self.backend
            )
            submitted[ref] = (unit, memory)
        done: list[tuple[list[Case], UnitResult]] = []
        pending = list(submitted)
        try:
            with tqdm(total=len(pending), desc="ray units", unit="unit", disable=not progress) as bar:
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    unit, memory = submitted[ready[0]]
                    done.append((unit, self._result(ready[0], unit, memory)))
                    bar.update(1)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return done

    def _result(self, ref, unit: list[Case], memory: int | None) -> UnitResult:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.OutOfMemoryError as err:
            why = out_of_memory(unit, memory, err)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as err:
            why = f"its worker was lost {MAX_RETRIES + 1} times ({err.__class__.__name__}); rerun the unit"
        except ray.exceptions.TaskCancelledError:
            raise KeyboardInterrupt from None
        except ray.exceptions.RayTaskError as err:  # an error the task raised, not one the suite foresaw
            why = f"the unit's task failed: {str(err).splitlines()[-1] if str(err) else err.__class__.__name__}"
        return UnitResult(failures={(case.id, case.sae): why for case in unit})

    def shutdown(self) -> None:
        if self.started:
            self.ray.shutdown()
