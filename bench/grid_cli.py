"""Run every cell of a grid file, skipping what is done and resuming what was cut.

    safbench grid grids/quick.yaml                       # here, one cell after another
    safbench grid grids/quick.yaml --dry-run             # list cells and their states; touch nothing
    safbench grid grids/fashionmnist.yaml --retry-failed # also rerun failed cells (old summary kept)
    safbench grid grids/paper-cifar.yaml --launcher gpus # one worker per visible GPU
    safbench grid grids/paper-imagenet.yaml --launcher slurm --partition gpu --nproc-per-node 8

Exit status: 0 when every cell is finished or diverged (or submitted, for slurm), or is left to be
resumed by the next invocation (held by another process, or interrupted: its torchrun was killed), 1
when a cell failed, 2 for a bad grid file or option (nothing has run then) or when a cell has a damaged
file (the other cells run; each damaged one gets a line saying which file and what to do).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .cells import State, cell_state, lock_holder, lock_path
from .errors import UsageError
from .grid import Cell, default_out, load_grid, resolve_grid
from .launchers import LAUNCHERS, LaunchOptions, launch_gpus, launch_local, launch_slurm


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("grid", help="run (or list) every cell of a grid file",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="grid YAML file (base, grid, per_method), or the name of a shipped grid: "
                                "quick, fashionmnist, fashionmnist-regime, paper-cifar, paper-imagenet, ...")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local", help="where cells run (default: local)")
    p.add_argument("--out", help="output folder (default: base out, else runs/<file stem>)")
    p.add_argument("--dry-run", action="store_true", help="list cells and their states; run and write nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="rerun failed cells (their summary.json is kept as summary.failed-<n>.json)")
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="run each cell with torchrun on N processes (GPUs; gloo processes on the CPU)")
    g = p.add_argument_group("gpus launcher")
    g.add_argument("--gpus", help="comma-separated GPU ids to use (default: CUDA_VISIBLE_DEVICES or all)")
    s = p.add_argument_group("slurm launcher (submitit)")
    s.add_argument("--partition", help="slurm partition")
    s.add_argument("--time-min", type=int, default=24 * 60, help="time limit per task in minutes; a cell that "
                   "outlives it is requeued and resumes from its checkpoint (default: 1440)")
    s.add_argument("--gpus-per-task", type=int, help="GPUs per task (default: --nproc-per-node; 0 for cpu cells)")
    s.add_argument("--cpus-per-task", type=int, help="CPU cores per task")
    s.add_argument("--mem-gb", type=int, help="memory per task in GB")
    s.add_argument("--array-parallelism", type=int, default=64, help="array tasks running at once (default: 64)")
    s.add_argument("--max-requeues", type=int, default=50, help="timeouts a task may take (default: 50)")
    s.add_argument("--cluster", choices=("slurm", "local"), default=None,
                   help="submitit cluster (default: slurm; local runs the array on this machine)")
    s.add_argument("--wait", action="store_true", help="wait for the array tasks and report their states")
    p.set_defaults(func=_grid)


def _grid(args: argparse.Namespace) -> int:

    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node={args.nproc_per_node} is invalid: allowed values are integers >= 1")
    spec = load_grid(args.file)
    out = args.out or spec.base.get("out") or default_out(resolve_grid(args.file))
    if spec.tune is not None:  # its cells are made by the tuning (trials, then the choices on fresh seeds)
        raise UsageError(f"{args.file} has a tune: section: run it with safbench tune {args.file} (several "
                         "processes on one --out share its cells)")
    if args.dry_run:  # streamed: a huge grid prints as it expands, never held whole
        print_cells(args.file, out, spec.iter_cells(out=out))
        return 0
    cells = spec.cells(out=out)  # every cell validated before anything runs
    opts = LaunchOptions(
        nproc_per_node=args.nproc_per_node, retry_failed=args.retry_failed, command=args.invocation,
        gpus=tuple(x.strip() for x in args.gpus.split(",") if x.strip()) if args.gpus else None,
        cluster=args.cluster, partition=args.partition, time_min=args.time_min, gpus_per_task=args.gpus_per_task,
        cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, array_parallelism=args.array_parallelism,
        max_requeues=args.max_requeues, wait=args.wait)
    print(f"grid {args.file}: {len(cells)} cells in {out} (launcher {args.launcher})", flush=True)
    if args.launcher == "slurm":
        launch_slurm(cells, opts, job_name=f"safbench-{Path(args.file).stem}")
        if not args.wait:
            return 0
    elif args.launcher == "gpus":
        launch_gpus(args.file, out, cells, opts)
    else:
        return _report(cells, [o for o in launch_local(cells, opts) if o.state is State.DAMAGED])
    return _report(cells)


def _report(cells: Sequence[Cell], damaged: Sequence[Any] = ()) -> int:
    """Totals by state, one line per damaged file on stderr, and the exit status. `damaged`: outcomes of
    cells whose damage only loading the checkpoint in full revealed (their state reads interrupted)."""
    found = {o.cell.run_dir: o.error for o in damaged}
    states = {c.run_dir: cell_state(c.run_dir) for c in cells}
    for run_dir in found:
        if states.get(run_dir) is State.INTERRUPTED:
            states[run_dir] = State.DAMAGED
    counts = Counter(states.values())
    print(f"{len(cells)} cells: " + ", ".join(f"{counts[s]} {s.value}" for s in State if counts[s]), flush=True)
    if counts[State.FAILED]:
        print("failed cells are not rerun without --retry-failed; see attempts.jsonl in their run directories")
    if counts[State.DAMAGED]:
        from .damage import damaged_files

        for cell in cells:
            if states[cell.run_dir] is State.DAMAGED:
                lines = [str(d) for d in damaged_files(cell.run_dir)] or [found.get(cell.run_dir) or
                                                                           f"{cell.run_dir} is damaged"]
                for line in lines:
                    print(f"safbench: error: {line}", file=sys.stderr, flush=True)
    return 1 if counts[State.FAILED] else 2 if counts[State.DAMAGED] else 0


def print_cells(file: str, out: str, cells: Iterable[Cell]) -> None:
    """The dry-run table: index, state, hash, run directory, settings; one line per cell as `cells`
    yields it (a generator is never held whole), the count at the end. Reads only."""
    print(f"grid {file}: cells in {out}", flush=True)
    counts: Counter[State] = Counter()
    width = None
    for i, cell in enumerate(cells, 1):
        if width is None:  # run directory names of one grid differ little in length
            width = len(cell.name)
            print(f"{'#':>4}  {'state':<11}  {'hash':<10}  {'run dir':<{width}}  settings")
        state = cell_state(cell.run_dir)
        counts[state] += 1
        holder = f"  [held by {lock_holder(lock_path(cell.run_dir))}]" if state is State.RUNNING else ""
        print(f"{i:>4}  {state.value:<11}  {cell.hash:<10}  {cell.name:<{width}}  {cell.describe()}{holder}",
              flush=i <= 100 or i % 1000 == 0)
    print("states: " + ", ".join(f"{counts[s]} {s.value}" for s in State if counts[s])
          + f" ({sum(counts.values())} cells)")
