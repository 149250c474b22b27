"""What a run costs in forward passes, counted rather than timed: the rows each model's blocks ran (a hook on every
block counts them) against the floor of the passes the cases need.

The floor, per model, token set and hook: one prefix to the hook; per shared transfer pass and batch: the clean
continuation and one continuation per distinct spliced residual; per pass, the zero-ablated continuation of each
distinct row (a row ablated at every position is all zeros, in every batch: one such row serves the whole pass).
One forward-pass equivalent (FPE) is one row through every block of its model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd

from sae_bench.engine.backends import Model, backend_of


@dataclass
class ForwardCost:
    """Block rows run and block rows at the floor, per model spec."""

    run: Counter[str] = field(default_factory=Counter)
    floor: Counter[str] = field(default_factory=Counter)
    n_layers: dict[str, int] = field(default_factory=dict)
    counting: bool = True

    def watch(self, spec: str, model: Model) -> None:
        """Count every row that passes a block of `model` from now on (permanent hooks: they survive reset_hooks)."""
        backend = backend_of(model)
        self.n_layers[spec] = backend.n_layers

        def count(layer: int, rows: int) -> None:
            if self.counting:
                self.run[spec] += rows

        backend.count_block_rows(count)

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        """Forward work outside the evaluation (greedy rollouts, cached on disk) is left out of both columns."""
        self.counting = False
        try:
            yield
        finally:
            self.counting = True

    def add_floor(self, spec: str, rows: int, blocks: int) -> None:
        self.floor[spec] += rows * blocks

    def table(self) -> pd.DataFrame:
        """Per model: FPE run, FPE at the floor and their ratio; a total row last."""
        specs = sorted(s for s in set(self.run) | set(self.floor) if self.run[s] or self.floor[s])
        frame = pd.DataFrame(
            {
                "model": specs,
                "fpe_run": [self.run[s] / self.n_layers[s] for s in specs],
                "fpe_floor": [self.floor[s] / self.n_layers[s] for s in specs],
            }
        )
        total = pd.DataFrame([{"model": "total", "fpe_run": frame.fpe_run.sum(), "fpe_floor": frame.fpe_floor.sum()}])
        frame = pd.concat([frame, total], ignore_index=True)
        return frame.assign(ratio=frame.fpe_run / frame.fpe_floor)
