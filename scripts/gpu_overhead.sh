#!/usr/bin/env bash
# Issue 6's GPU measurements: every method's step time on the CIFAR shapes (resnet18, wrn28_10,
# pyramidnet110; 10 and 100 classes) and the ImageNet shape (timm resnet50, vit_small_patch32_224),
# bf16 and channels_last; the real CIFAR training loop against the step alone; the SAF store report
# (ImageNet-1k sizes, per-step exchange on the GPU, 16-bit error); then the report, whose
# "Cost per step" section judges them against the targets. Needs one CUDA GPU; run the stages
# separately where a job is limited to ~10 minutes.
#
#   bash scripts/gpu_overhead.sh [cifar|imagenet|all]    # -> results/overhead/*.csv, results/REPORT.md
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
case "$stage" in
  cifar|imagenet|all) ;;
  *) echo "gpu_overhead.sh: stage '$stage' is unknown: use cifar, imagenet or all" >&2; exit 2 ;;
esac
if [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else  # a machine with its own torch and no venv: run from the working tree
  PY=${PYTHON:-python}
  export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
fi
OUT=${OUT:-results/overhead}

if [[ "$stage" != imagenet ]]; then
  "$PY" -m bench overhead --device cuda --shape cifar10 --loop --store-report --out "$OUT"
  "$PY" -m bench overhead --device cuda --shape cifar100 --out "$OUT"
fi
if [[ "$stage" != cifar ]]; then
  "$PY" -m bench overhead --device cuda --shape imagenet --out "$OUT"
fi
"$PY" -m bench report --results results
