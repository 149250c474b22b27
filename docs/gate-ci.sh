#!/usr/bin/env bash
# Gate an SAE release from its own repository: install the suite, run the gate, keep the verdict table, the JUnit
# file, the results database and the report. Fails on exit 1 (a regression) or 2 (bad input); 0 only when every
# selected case ran with the new SAE and held.
#   SAE=./release/sae CASES="tiny-mistral/base-sae@" OUT=gate-out bash docs/gate-ci.sh
set -uo pipefail
: "${SAE:?the new SAE: a SAELens folder, or zoo:, saelens:, hf:, wandb: spec}"
: "${CASES:?the -k expression (CASE:GROUP ids, @ allowed) of the cases whose SAE it replaces}"
OUT="${OUT:-gate-out}"
mkdir -p "$OUT"
pip install "torch==2.13.0" && pip install "${PACKAGE:-sae-transfer-bench}" || exit 2
sae-bench gate --sae "$SAE" --cases "$CASES" ${CASES_DIR:+--cases-dir "$CASES_DIR"} \
  --junit "$OUT/gate.xml" --table "$OUT/gate.md" --results "$OUT/results.sqlite"
status=$?
sae-bench report --results "$OUT/results.sqlite" --out "$OUT/report" || true  # the report is an artifact, not a verdict
exit "$status"
