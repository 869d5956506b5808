"""`--estimate`: the bill of a grid (`grid FILE --dry-run --estimate`) or of one run (`run ... --estimate`).

One table line per cell (train, evaluation, sharpness/Hessian extras, total, the share already done),
then the totals (all, done, left), the wall-clock over the launcher's devices, and the assumptions.
Nothing is written; the cells' run directories are only read.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .cells import DONE, State, cell_state
from .config import RunConfig
from .estimate import CellEstimate, estimate_cell, human, totals, wall_clock
from .estimate_probe import probe_cells
from .provenance import device_name
from .records import METRICS
from .run import resolve_device


def done_fraction(run_dir: Path, epochs: int) -> float:
    """The share of a cell's epochs already in its run directory (finished: all of them)."""
    state = cell_state(run_dir)
    if state in DONE:
        return 1.0
    if state is State.PENDING or not (run_dir / METRICS).is_file():
        return 0.0
    try:
        rows = max(len((run_dir / METRICS).read_text().splitlines()) - 1, 0)
    except OSError:
        return 0.0
    return min(rows / epochs, 1.0)


def estimate_configs(configs: Sequence[RunConfig], *, world_size: int = 1
                     ) -> tuple[list[CellEstimate], list[str], torch.device]:
    """Each config's estimate (with what its run directory already holds), the notes, and the device timed."""
    device = resolve_device(configs[0])
    resolved = [c.resolved(device.type) for c in configs]
    work_units, probe = probe_cells(resolved, device, world_size=world_size, progress=True)
    estimates = [estimate_cell(work, unit, done_fraction=done_fraction(c.run_dir(), c.epochs))
                 for c, (work, unit) in zip(configs, work_units, strict=True)]
    steps = sorted({(c.dataset, c.train_subset, w.steps_per_epoch) for c, (w, _) in zip(configs, work_units,
                                                                                        strict=True)}, key=str)
    notes = [f"device: {device_name(device)}, {torch.get_num_threads()} torch threads (this process's; the "
             "runs get the same unless their environment differs)",
             "steps per epoch: training samples // (batch x world size), the last partial batch dropped: "
             + ", ".join(f"{d}{f' (subset {s:,})' if s else ''}: {n:,}" for d, s, n in steps),
             *([f"{world_size} processes per cell (torchrun): each rank's step timed alone; the gradient "
                "all-reduce between them is not timed"] if world_size > 1 else []),
             *probe.notes,
             *probe.data_notes,
             "extras: sharpness batches every epoch (--sharpness); Hessians at the end (--hessian) and at "
             "--hessian-epochs, priced by the Hessian-vector products the installed Hessian hook says it spends (its "
             "algorithm, k, trace probes, label views; 95 per measurement without one) over hessian_samples",
             "not a promise: a step was timed for seconds, not for hours; other jobs on this machine, "
             "thermal limits, a slower filesystem or a different device change the bill"]
    return estimates, notes, device


def print_grid_estimate(file: str, out: str, cells: Sequence, *, launcher: str, workers: int | None,
                        world_size: int = 1) -> None:
    """The dry-run table with estimates, the totals, the wall-clock, and the assumptions."""
    print(f"grid {file}: {len(cells)} cells in {out}; timing each combination on this device ...",
          file=sys.stderr, flush=True)
    estimates, notes, device = estimate_configs([c.config for c in cells], world_size=world_size)
    width = max((len(c.name) for c in cells), default=10)
    print(f"grid {file}: cells in {out} (estimated on {device.type})")
    print(f"{'#':>4}  {'state':<11}  {'run dir':<{width}}  {'train':>9}  {'eval':>9}  {'extras':>9}  "
          f"{'total':>9}  {'done':>5}  settings")
    for i, (cell, est) in enumerate(zip(cells, estimates, strict=True), 1):
        extras = est.sharpness_s + est.hessian_s
        print(f"{i:>4}  {cell_state(cell.run_dir).value:<11}  {cell.name:<{width}}  {human(est.train_s):>9}  "
              f"{human(est.eval_s):>9}  {human(extras) if extras else '-':>9}  {human(est.total_s):>9}  "
              f"{est.done_fraction:>5.0%}  {cell.describe()}")
    print_totals(estimates, launcher=launcher, workers=workers)
    print("assumptions:")
    for note in notes:
        print(f"  - {note}")


def print_totals(estimates: Sequence[CellEstimate], *, launcher: str, workers: int | None) -> None:
    t = totals(estimates)
    print(f"total {human(t.total_s)}: done {human(t.done_s)}, left {human(t.left_s)} "
          f"({len(estimates)} cells, one after another on this device)")
    if launcher in ("gpus", "slurm"):
        if not workers:
            print(f"wall-clock ({launcher}): no GPU visible here; give --gpus to price it over your GPUs")
        else:
            wall = wall_clock([e.left_s for e in estimates], workers)
            print(f"wall-clock left over {workers} {'GPU workers' if launcher == 'gpus' else 'array tasks'} "
                  f"({launcher} launcher, each as fast as this device): {human(wall)}")


def print_run_estimate(config: RunConfig) -> None:
    estimates, notes, _ = estimate_configs([config])
    est = estimates[0]
    print(f"{config.run_name()}: train {human(est.train_s)}, eval {human(est.eval_s)}, sharpness "
          f"{human(est.sharpness_s)}, Hessian {human(est.hessian_s)}; total {human(est.total_s)} "
          f"({est.done_fraction:.0%} done, {human(est.left_s)} left)")
    print("assumptions:")
    for note in notes:
        print(f"  - {note}")
