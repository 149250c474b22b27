"""Expectation files: the rules that judge a measurement, the files on disk, and the published values."""

from sae_bench.moved import hand_on_names

__getattr__ = hand_on_names(__name__)  # the names `sae_bench.expectations` held in 0.1, until 0.3
