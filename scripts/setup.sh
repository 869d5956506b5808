#!/usr/bin/env bash
# Creates .venv and installs safbench with its test tools. Idempotent: a second run installs nothing new.
# torch/torchvision are pinned to the builds that import together on this project's CPU machines
# (every torchvision wheel reachable there is a CUDA build, which also runs on the CPU);
# on a GPU cluster set TORCH_SPEC="" to keep the torch you have, or to your own pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ -n "$TORCH_SPEC" ]; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q $TORCH_SPEC
fi
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, torchvision, timm, optimizers, bench, analysis; print('safbench ready: torch', torch.__version__)"
