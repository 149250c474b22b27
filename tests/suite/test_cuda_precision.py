"""The checks only a CUDA device can make: float32 cases run without TF32, and the zoo's engine pair in float16 and
bfloat16 on the GPU lands where the same dtype lands on the CPU. Marked `gpu`; skipped, with the reason, where torch
sees no CUDA device (CI, this project's machines). Run `pytest tests/suite/test_cuda_precision.py` on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from sae_bench.engine.backends import torch_dtype
from sae_bench.engine.eval_config import EvalConfig
from sae_bench.engine.evaluate import evaluate_transfer
from sae_bench.sources.loading import load_model, load_sae, load_zoo_data
from sae_bench.suite.runner import Suite, SuiteOptions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: torch sees none here"),
]
HOOK = "blocks.2.hook_resid_pre"


def _engine_pair(device: str, dtype: str) -> dict:
    model = load_model("zoo:tiny-mistral/instruct", device=device, dtype=torch_dtype(dtype))
    sae = load_sae("zoo:tiny-mistral/base-sae", device=device)
    rows = load_zoo_data("heldout")["input_ids"][:64]
    report = evaluate_transfer(model, sae, rows, EvalConfig(hook=HOOK, batch_size=32, progress=False))
    return report.to_row()


def test_a_float32_run_on_cuda_uses_no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = True
    suite = Suite(SuiteOptions(device="cuda"))
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.backends.cuda.matmul.allow_tf32
    assert "without TF32" in suite.device_recorded


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_cuda_lands_where_the_cpu_does(dtype):
    """Another kernel, the same precision: the GPU's half-precision values sit within the precision's rounding of
    the CPU's (float16 keeps 11 bits of mantissa, bfloat16 8)."""
    cpu, gpu = _engine_pair("cpu", dtype), _engine_pair("cuda", dtype)
    rel = 0.02 if dtype == "bfloat16" else 0.005
    for name in ("explained_variance", "ce_clean", "ce_spliced", "ce_loss_recovered", "kl_spliced"):
        assert gpu[name] == pytest.approx(cpu[name], rel=rel), name
    assert gpu["batches_overflowed"] == 0
