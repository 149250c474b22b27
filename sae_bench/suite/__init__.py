"""The suite: measure, judge and record each case's metric groups; its pytest options and plugin."""

from sae_bench.moved import hand_on_names

__getattr__ = hand_on_names(__name__)  # the names `sae_bench.suite` held in 0.1, until 0.3
