"""Where a grid's cells run: `local` (here, one after another), `gpus` (a worker per GPU), `slurm`.

None of them schedules anything itself: cells are claimed through their locks (bench.cells), so
workers, repeated invocations and array tasks may overlap freely and still run each cell once.

- local: this process runs the cells in order (bench.cell_runner).
- gpus:  one `safbench grid FILE --launcher local` subprocess per GPU (per N GPUs with
         --nproc-per-node N), each seeing only its GPUs through CUDA_VISIBLE_DEVICES; they share
         the cells through the locks.
- slurm: a submitit job array, one task per cell still to run. A task is a Checkpointable whose
         checkpoint() requeues the same cell: on timeout or preemption submitit requeues it and
         it resumes from the run's checkpoint.pt (the last finished epoch).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from .cell_runner import Outcome, prepare_retry, run_cell, run_cells
from .cells import DONE, State, cell_state
from .config import RunConfig
from .errors import UsageError
from .grid import Cell
from .lifeline import die_with_parent
from .records import GRID_DIR
from .results import write_results

LAUNCHERS = ("local", "gpus", "slurm")


@dataclass(frozen=True)
class LaunchOptions:
    nproc_per_node: int = 1
    retry_failed: bool = False
    command: str | None = None
    # gpus
    gpus: tuple[str, ...] | None = None  # device ids; None: all visible
    # slurm (submitit)
    cluster: str | None = None  # None or "slurm": sbatch; "local": run the array on this machine
    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_task: int | None = None  # default: nproc_per_node, or 0 if every cell has device cpu
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    array_parallelism: int = 64
    max_requeues: int = 50  # timeouts a cell may take (200-epoch runs outlive most time limits)
    lock_wait_s: float = 300.0  # a requeued task may find its predecessor's lock still held (NFS)
    wait: bool = False


def launch_local(cells: Sequence[Cell], opts: LaunchOptions) -> list[Outcome]:
    if opts.retry_failed:
        prepare_retry(cells)
    outcomes = run_cells(cells, nproc_per_node=opts.nproc_per_node, command=opts.command)
    if cells:
        write_results(cells[0].config.out)
    return outcomes


# ---- gpus --------------------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def launch_gpus(grid_file: str | Path, out: str, cells: Sequence[Cell], opts: LaunchOptions) -> int:
    """Run one worker per GPU group until no cell is left; the exit code is the worst worker's."""
    gpus = list(opts.gpus) if opts.gpus is not None else visible_gpus()
    per = max(opts.nproc_per_node, 1)
    groups = [gpus[i:i + per] for i in range(0, len(gpus) - per + 1, per)]
    if not groups:
        raise UsageError(f"launcher gpus needs {per} GPU(s) per worker, found {len(gpus)} "
                         "(set CUDA_VISIBLE_DEVICES or --gpus, or use --launcher local)")
    if opts.retry_failed:
        prepare_retry(cells)  # here, once: each worker retrying would rerun a cell that failed again
    procs = []
    for group in groups:
        cmd = [sys.executable, "-m", "bench", "grid", str(grid_file), "--launcher", "local", "--out", out,
               "--nproc-per-node", str(per)]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(group)}
        print(f"worker on GPU {','.join(group)}: {' '.join(cmd)}", flush=True)
        procs.append(subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent))
    try:
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    write_results(out)
    return max(codes, key=lambda c: (c != 0, abs(c)))


# ---- slurm (submitit) ----------------------------------------------------------------------------------
class CellTask(submitit.helpers.Checkpointable):
    """One array task: run one cell (its config as plain data), under its lock, then rebuild results."""

    def __init__(self, nproc_per_node: int = 1, lock_wait_s: float = 300.0) -> None:
        self.nproc_per_node = nproc_per_node
        self.lock_wait_s = lock_wait_s

    def __call__(self, values: dict[str, Any]) -> dict[str, Any]:
        config = RunConfig.from_dict(values, where="slurm task")
        cell = Cell(config)
        task = os.environ.get("SLURM_JOB_ID", "local")
        outcome = run_cell(cell, nproc_per_node=self.nproc_per_node, lock_wait_s=self.lock_wait_s,
                           command=f"safbench grid (slurm task {task})", label=f"[task {task}]")
        write_results(config.out)
        return {"run_dir": str(cell.run_dir), "state": outcome.state.value, "ran": outcome.ran,
                "error": outcome.error}

    def checkpoint(self, values: dict[str, Any]) -> submitit.helpers.DelayedSubmission:
        # The run's state already lives in checkpoint.pt (written after every epoch); requeueing
        # the same cell is all it takes for the next task to resume from it.
        return submitit.helpers.DelayedSubmission(self, values)


def slurm_executor(folder: Path, opts: LaunchOptions, job_name: str, *,
                   cpu_only: bool = False) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster=_cluster(opts), slurm_max_num_timeout=opts.max_requeues,
                                     local_max_num_timeout=opts.max_requeues)
    # One GPU per torchrun process unless told otherwise; none for cells pinned to the CPU.
    gpus = opts.gpus_per_task if opts.gpus_per_task is not None else (0 if cpu_only else opts.nproc_per_node)
    params: dict[str, Any] = {"name": job_name, "timeout_min": opts.time_min, "nodes": 1, "tasks_per_node": 1,
                              "gpus_per_node": gpus, "slurm_array_parallelism": opts.array_parallelism}
    if opts.cpus_per_task is not None:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if opts.partition:
        params["slurm_partition"] = opts.partition
    executor.update_parameters(**params)
    return executor


def _cluster(opts: LaunchOptions) -> str:
    cluster = opts.cluster or "slurm"
    if cluster == "slurm" and shutil.which("sbatch") is None:
        # submitit would quietly fall back to running the array here; say so instead.
        raise UsageError("launcher slurm: sbatch is not on PATH (not a slurm login node?); "
                         "use --cluster local to run the array on this machine")
    return cluster


def launch_slurm(cells: Sequence[Cell], opts: LaunchOptions, job_name: str = "safbench") -> list[Any]:
    """Submit one array task per cell that still needs running; with opts.wait, wait for them."""
    _cluster(opts)  # before touching anything
    if opts.retry_failed:
        prepare_retry(cells)
    todo = [c for c in cells if cell_state(c.run_dir) not in (*DONE, State.FAILED, State.RUNNING, State.DAMAGED)]
    if not todo:
        print("nothing to submit: every cell is finished, diverged, failed or running", flush=True)
        return []
    out = Path(todo[0].config.out).resolve()  # tasks may start elsewhere: give them an absolute path
    cpu_only = all(c.config.device == "cpu" for c in todo)
    executor = slurm_executor(out / GRID_DIR / "submitit", opts, job_name, cpu_only=cpu_only)
    payloads = [{**c.config.to_dict(), "out": str(out)} for c in todo]
    jobs = executor.map_array(CellTask(opts.nproc_per_node, opts.lock_wait_s), payloads)
    print(f"submitted {len(jobs)} task(s): {', '.join(j.job_id for j in jobs[:5])}"
          f"{' ...' if len(jobs) > 5 else ''}  (logs in {out / '.grid' / 'submitit'})", flush=True)
    if opts.wait:
        for cell, job in zip(todo, jobs, strict=True):
            try:
                result = job.result()
                print(f"{cell.name}: {result['state']}", flush=True)
            except Exception as exc:  # noqa: BLE001 - report every task, then the totals
                print(f"{cell.name}: task {job.job_id} failed: {str(exc).strip().splitlines()[-1]}", flush=True)
        write_results(out)
    return jobs
