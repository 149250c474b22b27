"""sae_bench: does a sparse autoencoder still work when spliced into a model it was not trained on?

The public API is the names below (docs/design.md §2 lists the layers they come from); everything else is internal.
They load on first use, so `import sae_bench` and the `sae-bench` command stay light.
"""

from __future__ import annotations

import importlib

from sae_bench import moved

PUBLIC = {
    # sources: what a case loads
    "load_model": "sae_bench.sources.loading",
    "load_sae": "sae_bench.sources.loading",
    "load_zoo_data": "sae_bench.sources.loading",
    # the engine: one SAE (or several) spliced into one model
    "EvalConfig": "sae_bench.engine.eval_config",
    "OutlierPolicy": "sae_bench.engine.outliers",
    "TransferReport": "sae_bench.engine.transfer_report",
    "evaluate_transfer": "sae_bench.engine.evaluate",
    "evaluate_shared": "sae_bench.engine.evaluate",
    "estimate_scaling_factor": "sae_bench.engine.evaluate",
    "PairedConfig": "sae_bench.engine.universality",
    "UniversalityReport": "sae_bench.engine.universality",
    "evaluate_universality": "sae_bench.engine.universality",
    "weight_drift": "sae_bench.engine.drift",
    # cases and the suite
    "load_registry": "sae_bench.cases.registry",
    "Suite": "sae_bench.suite.runner",
    # the gate's checks of a new SAE
    "load_checked": "sae_bench.gates.single",
    # training an SAE with SAELens's runner
    "finetune_sae": "sae_bench.tooling.sae_training",
}
__all__ = sorted(PUBLIC)

moved.install()


def __getattr__(name: str) -> object:
    if name not in PUBLIC:
        raise AttributeError(f"module 'sae_bench' has no attribute {name!r}")
    return getattr(importlib.import_module(PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *PUBLIC})
