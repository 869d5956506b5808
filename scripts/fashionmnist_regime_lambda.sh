#!/usr/bin/env bash
# Issue 28's lambda_max courses on the label-noise regime: grids/fashionmnist-regime-lambda.yaml (each method at
# its tuned setting, seeds 0-2, lambda_max after epochs 1, 5, 10, 15, 20 on the noisy labels, the true labels and
# the flipped images) into results/fashionmnist-regime-lambda, as two grid processes of one thread each, then the
# report. Resumable: re-running skips finished runs and resumes cut ones (a measured epoch is not measured again).
#
#   bash scripts/fashionmnist_regime_lambda.sh     # -> results/fashionmnist-regime-lambda/, results/REPORT.md
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv/bin/python || bash scripts/setup.sh
bash scripts/get_fashionmnist.sh
RUNS=${RUNS:-results/fashionmnist-regime-lambda}
SB=.venv/bin/safbench
export OMP_NUM_THREADS=1
$SB grid grids/fashionmnist-regime-lambda.yaml --out "$RUNS" --dry-run --estimate
$SB grid grids/fashionmnist-regime-lambda.yaml --out "$RUNS" &
$SB grid grids/fashionmnist-regime-lambda.yaml --out "$RUNS" &
wait
$SB report --results results
