#!/usr/bin/env bash
# Issue 7's evidence, end to end: the 15-run Fashion-MNIST grid, the flatness of every final model,
# and the report. About 1.5-2 h on 2 CPU cores (grid ~80 min, Hessians ~15 min, landscapes ~5 min).
# Keep the machine otherwise idle while the grid runs: its images/s are part of the results.
# Re-running skips finished cells; the analysis steps overwrite their own files only.
#
#   bash scripts/fashionmnist_evidence.sh            # -> results/fashionmnist/, results/REPORT.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/get_fashionmnist.sh
RUNS=${RUNS:-results/fashionmnist}
SB=.venv/bin/safbench

$SB grid grids/fashionmnist.yaml --out "$RUNS"
# lambda_max (top-3 eigenvalues) and the Hutchinson trace on the same 1000 fixed training samples
$SB hessian "$RUNS"/fashionmnist-*/ --samples 1000 --k 3 --trace-samples 50
# a 1D filter-normalised landscape for every run, 2D for seed 0 of each method, the SGD -> SAF line
$SB landscape "$RUNS"/fashionmnist-*/ --dim 1 --samples 1000
$SB landscape "$RUNS"/fashionmnist-*-s0-*/ --dim 2 --samples 1000
$SB landscape "$RUNS"/fashionmnist-*-sgd-s0-*/ --line-to "$(echo "$RUNS"/fashionmnist-*-saf-s0-*/)" --samples 1000
$SB report --results results
