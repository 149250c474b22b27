"""The benchmark cases: the registry of case files, sweeps and claims, and the `-k` selection matcher."""

from sae_bench.moved import hand_on_names

__getattr__ = hand_on_names(__name__)  # the names `sae_bench.cases` held in 0.1, until 0.3
