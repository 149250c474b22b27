"""The precisions a model runs in, by name: what a case declares (`dtype`), what `--dtype` overrides it with, what
the results database and an expectation entry record, and what memory estimates size weights and activations in.

Only the model runs in this precision. The SAE runs in float32 (SAELens's default, and how both seed studies spliced
a float32 SAE into a float16 model: `SAE.from_pretrained` without a dtype), its input cast to float32 and its
reconstruction cast back to the residual's dtype before it is spliced; log-softmax, CE and KL are taken in float32
from the model's logits, and every statistic accumulates in float64 (docs/design.md §4).
"""

from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16")
"""What a case or `--dtype` may name, the default first."""
DEFAULT_DTYPE = DTYPES[0]
RECORDED_BEFORE = DEFAULT_DTYPE
"""What an expectation entry or a results row written before dtypes were recorded was measured in: every case ran in
float32 then."""
HALF = ("bfloat16", "float16")
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SAE_DTYPE = "float32"
"""What every SAE runs in, whatever the model's dtype."""
OVERFLOW_RULES = ("undefined", "drop-inf-batches")
"""What a batch whose scores hold inf or NaN (a half-precision forward that overflowed) does to the metrics it feeds:
`undefined` (the default) makes each such metric undefined, naming how many batches overflowed; `drop-inf-batches`
(Kutsyk et al., saetuning/get_scores.py: `loss[~torch.isinf(loss)]`) leaves a batch whose loss is +inf out of that
loss's mean and counts it; a NaN is not dropped, so its metric is still undefined."""


def dtype_problem(name: object, where: str) -> str | None:
    """Why `name` is not a precision the suite runs models in (None: it is one)."""
    if name in DTYPES:
        return None
    return f"{where} {name!r} is not a dtype the suite runs models in; choose from {', '.join(DTYPES)}"
