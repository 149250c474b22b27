"""Where models, SAEs and tokens come from: the shipped zoo, the hub, fetching, chat data, rehearsal stand-ins."""

from sae_bench.moved import hand_on_names

__getattr__ = hand_on_names(__name__)  # the names `sae_bench.sources` held in 0.1, until 0.3
