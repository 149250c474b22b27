"""pytest plugin: `--rehearse` sets the stand-ins up before any library that reads hub settings is imported.

Registered as a `pytest11` entry point, so `pytest benchmarks -m hub --rehearse` works from any directory; conftest
files load too late for this (theirs import SAELens, which imports huggingface_hub).
"""

from __future__ import annotations


def pytest_addoption(parser) -> None:
    parser.getgroup("sae_bench").addoption(
        "--rehearse",
        action="store_true",
        help="run the hub cases offline on miniature stand-ins of every hub source (models, SAEs, datasets), "
        "scaled down; verdicts are reported, never written (docs/hub.md: 'The hub tier, rehearsed')",
    )


def pytest_load_initial_conftests(early_config, parser, args) -> None:
    if getattr(early_config.known_args_namespace, "rehearse", False):
        from sae_bench.sources.rehearsal import activate  # noqa: PLC0415 - only when asked: the plugin loads in every pytest run

        activate()
