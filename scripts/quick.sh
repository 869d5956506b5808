#!/usr/bin/env bash
# The main job: install, get real Fashion-MNIST, run the quick grid (all five methods), build the report.
# Re-running it skips finished cells and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/get_fashionmnist.sh
.venv/bin/safbench grid grids/quick.yaml --out runs/quick
.venv/bin/safbench report --results runs/quick
