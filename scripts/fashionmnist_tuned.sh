#!/usr/bin/env bash
# Issue 24's evidence, end to end: every method of the label-noise regime tuned with the same budget on a
# validation split (grids/fashionmnist-tuned.yaml), then run at its choice and its defaults on fresh seeds, as two
# `safbench tune` processes of one thread each sharing the cells; then the report. About 150 runs of 1.5-3
# CPU-minutes; resumable: re-running skips finished cells and resumes cut ones.
#
#   bash scripts/fashionmnist_tuned.sh          # -> results/fashionmnist-tuned/, results/REPORT.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/get_fashionmnist.sh
RUNS=${RUNS:-results/fashionmnist-tuned}
SB=.venv/bin/safbench
export OMP_NUM_THREADS=1
$SB tune grids/fashionmnist-tuned.yaml --out "$RUNS" &
$SB tune grids/fashionmnist-tuned.yaml --out "$RUNS" &
wait
$SB report --results results
