#!/usr/bin/env bash
# Real Fashion-MNIST without a network: Debian's dataset-fashion-mnist package
# (/usr/share/datasets/fashion-mnist/*.gz), which safbench finds by itself.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST found in $dir"; exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST installed in $dir"
else
  echo "Fashion-MNIST not installed: run the grid with --download to fetch it with torchvision" >&2
fi
