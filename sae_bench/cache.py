"""Where the suite keeps what it makes and can make again (rollouts, rehearsal stand-ins); imports nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SAE_BENCH_CACHE"


def cache_dir() -> Path:
    """`$SAE_BENCH_CACHE`, else ~/.cache/sae_bench."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "sae_bench"))
