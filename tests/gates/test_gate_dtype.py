"""Both gates run the models in --dtype (or their cases' own) and record it: the single-SAE gate's verdict table and
the release gate's results rows."""

from __future__ import annotations

import pandas as pd
import pytest

from sae_bench.cli import main
from sae_bench.results_store.database import ResultsDB


def test_the_single_sae_gate_judges_a_dtype_run_against_the_float32_expectations(tmp_path):
    table = tmp_path / "gate.csv"
    code = main(
        ["gate", "--sae", "zoo:tiny-qwen2/base-sae", "--cases", "tiny-qwen2/base-sae@chat and reconstruction",
         "--dtype", "bfloat16", "--no-results", "--table", str(table)]
    )  # fmt: skip
    assert code in (0, 1)  # judged, a precision check: never stale, never bad input
    verdicts = pd.read_csv(table)
    assert set(verdicts.dtype) == {"float32 → bfloat16"} and "stale" not in set(verdicts.verdict)


@pytest.mark.full  # the release gate's float16 passes on a CPU: about 40 s
def test_the_release_gate_loads_the_models_in_the_dtype_and_records_it(tmp_path):
    results = tmp_path / "results.sqlite"
    main(
        ["gate", "--release", "zoo:tiny-mistral/release-b-pt", "--baseline", "zoo:tiny-mistral/release-a-pt",
         "--sweep", "release-a", "--start-rows", "8", "--budget-rows", "8", "--dtype", "float16",
         "--results", str(results)]
    )  # fmt: skip
    db = ResultsDB(results, read_only=True)
    assert set(db.measurements().dtype) == {"float16"}
    db.close()
