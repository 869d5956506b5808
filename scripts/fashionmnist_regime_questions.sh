#!/usr/bin/env bash
# Issue 25's runs, end to end: grids/fashionmnist-regime-questions.yaml (the committed regime grid plus the
# limits, ablations, per-seed noise draws and 10-epoch controls) into results/fashionmnist-regime, as two
# grid processes of one thread each, then the report. The committed cells are recognised as done; only the
# 65 new runs train (about 130 CPU-minutes). Resumable: re-running skips finished cells.
#
#   bash scripts/fashionmnist_regime_questions.sh     # -> results/fashionmnist-regime/, results/REPORT.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/get_fashionmnist.sh
RUNS=${RUNS:-results/fashionmnist-regime}
SB=.venv/bin/safbench
export OMP_NUM_THREADS=1
$SB grid grids/fashionmnist-regime-questions.yaml --out "$RUNS" --dry-run
$SB grid grids/fashionmnist-regime-questions.yaml --out "$RUNS" &
$SB grid grids/fashionmnist-regime-questions.yaml --out "$RUNS" &
wait
$SB report --results results
