#!/usr/bin/env bash
# Issue 28, part 3: the clean-label Fashion-MNIST pilots (grids/clean-pilots/, the rule in each file's header),
# each into its own folder, then their report. Resumable: re-running skips finished runs and resumes killed
# ones from their last checkpoint. Two grid processes of one thread each share a pilot's six runs.
#
#   bash scripts/clean_pilots.sh              # every pilot, p1 first
#   bash scripts/clean_pilots.sh p1 p3        # only these
#   JOBS=1 bash scripts/clean_pilots.sh p1    # one grid process (the other core stays free)
#
# -> results/fashionmnist-clean/pilots/<pilot>/ and results/fashionmnist-clean/pilots/REPORT.md, whose claims
# table gives each pilot's "SAM beats SGD" interval (SAM - base, paired by seed): the rule needs it above 0
# with a mean of at least 0.3 points.
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv/bin/python || bash scripts/setup.sh
bash scripts/get_fashionmnist.sh
PILOTS=${PILOTS:-results/fashionmnist-clean/pilots}
JOBS=${JOBS:-2}
SB=.venv/bin/safbench
export OMP_NUM_THREADS=1
wanted=("$@")
for grid in grids/clean-pilots/p*.yaml; do
  name=$(basename "$grid" .yaml)
  if [ ${#wanted[@]} -gt 0 ] && ! printf '%s\n' "${wanted[@]}" | grep -qx "${name%%-*}"; then
    continue
  fi
  for _ in $(seq "$JOBS"); do
    $SB grid "$grid" --out "$PILOTS/$name" &
  done
  wait
done
$SB report --results "$PILOTS" --out "$PILOTS"
