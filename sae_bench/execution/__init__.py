"""Running cases: the executor, the memory each pass holds, the cost plan, and Ray units."""

from sae_bench.moved import hand_on_names

__getattr__ = hand_on_names(__name__)  # the names `sae_bench.execution` held in 0.1, until 0.3
