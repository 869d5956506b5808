#!/usr/bin/env bash
# The main job: install, get real Fashion-MNIST, run the quick grid (all five methods), time every
# method's step on the grid's model, build the report.
# Re-running it skips finished cells and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/get_fashionmnist.sh
.venv/bin/safbench grid grids/quick.yaml --out runs/quick
# The grid's model, every method's step timed side by side: the report's cost section.
if ! compgen -G "runs/quick/overhead/steps-*.csv" > /dev/null; then
  .venv/bin/safbench overhead --device cpu --shape fashionmnist --models cnn_small --batch-size 128 \
    --channels-last --repeats 5 --out runs/quick/overhead
fi
.venv/bin/safbench report --results runs/quick
