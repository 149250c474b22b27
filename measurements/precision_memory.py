"""Peak memory of the engine pair with the model in bfloat16 against float32 (`engine_pair_memory.py dtype`).

    python measurements/precision_memory.py
"""

from __future__ import annotations

import sys

from engine_pair_memory import compare

if __name__ == "__main__":
    compare("dtype")
    sys.exit(0)
