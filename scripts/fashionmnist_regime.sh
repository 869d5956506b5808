#!/usr/bin/env bash
# Issue 15's evidence, end to end: the regime grid (grids/fashionmnist-regime.yaml) as two grid processes
# of one thread each, then the report. About 100 CPU-minutes of training on 2 cores; resumable: re-running
# skips finished cells.
#
#   bash scripts/fashionmnist_regime.sh          # -> results/fashionmnist-regime/, results/REPORT.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/get_fashionmnist.sh
RUNS=${RUNS:-results/fashionmnist-regime}
SB=.venv/bin/safbench
export OMP_NUM_THREADS=1
$SB grid grids/fashionmnist-regime.yaml --out "$RUNS" &
$SB grid grids/fashionmnist-regime.yaml --out "$RUNS" &
wait
$SB report --results results
