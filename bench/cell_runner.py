"""Run grid cells on this machine: each under its lock, resumed from its checkpoint, recorded.

A cell runs in this process (`bench.run.run`, resume=True), or with `nproc_per_node > 1` as
`torchrun --standalone --nproc_per_node N -m bench run --config <cell yaml> --resume`. An exception
in a cell marks that cell failed (its summary says why, attempts.jsonl keeps the traceback) and
the next cell starts; Ctrl-C or a kill leaves the cell interrupted, to be resumed next time.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import io
from .cells import (
    DONE,
    CellLock,
    State,
    cell_state,
    has_checkpoint,
    lock_path,
    log_attempt,
    remove_leftovers,
    set_failed_aside,
    write_failed_summary,
)
from .damage import DamagedFile, damaged_files
from .grid import Cell
from .lifeline import die_with_parent, holder_env
from .records import GRID_DIR
from .results import write_results
from .run import LOCK_HELD_ENV
from .rundir import read_summary


@dataclass(frozen=True)
class Outcome:
    cell: Cell
    state: State  # after this call; RUNNING: another process holds the cell
    ran: bool  # this process trained it (at least tried)
    error: str | None = None


def run_cell(cell: Cell, *, nproc_per_node: int = 1, lock_wait_s: float = 0.5,
             command: str | None = None, label: str | None = None) -> Outcome:
    """Train one cell unless it is done, failed, or held by another process.

    `label` (e.g. "[3/15]"): print a line when the cell starts or resumes; None: stay quiet.
    """
    run_dir = cell.run_dir
    lock = CellLock(lock_path(run_dir))
    if not lock.acquire(lock_wait_s):
        return Outcome(cell, State.RUNNING, ran=False)
    try:
        state = cell_state(run_dir, check_lock=False)  # again, now that nobody else can change it
        if state in DONE or state is State.FAILED:
            return Outcome(cell, state, ran=False)
        if state is State.DAMAGED:  # before anything is written: the user must act first
            damage = damaged_files(run_dir)
            return Outcome(cell, State.DAMAGED, ran=False, error=str(damage[0]) if damage else None)
        remove_leftovers(run_dir)
        resume = has_checkpoint(run_dir)
        if label is not None:
            print(f"{label} {'resuming' if resume else 'starting'} {cell.name} ({cell.describe()})", flush=True)
        log_attempt(run_dir, "start", resume=resume, nproc_per_node=nproc_per_node,
                    config_hash=cell.hash, taken_over_from=lock.previous or None)
        try:
            if nproc_per_node > 1:
                _run_torchrun(cell, nproc_per_node, lock)
            else:
                _run_here(cell, command)
        except (KeyboardInterrupt, SystemExit):
            log_attempt(run_dir, "interrupted")
            raise
        except CellInterrupted as exc:  # stopped from outside, not by itself: resumable, not failed
            log_attempt(run_dir, "interrupted", error=str(exc))
            return Outcome(cell, cell_state(run_dir, check_lock=False), ran=True, error=str(exc))
        except DamagedFile as exc:  # not a failure of the cell: no failed summary, which --retry-failed
            log_attempt(run_dir, "end", status=State.DAMAGED.value, error=str(exc))  # could not clear
            return Outcome(cell, State.DAMAGED, ran=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one cell's failure must not stop the grid
            error = f"{type(exc).__name__}: {exc}"
            if read_summary(run_dir) is None:
                write_failed_summary(run_dir, cell.config, error, command)
            log_attempt(run_dir, "end", status=State.FAILED.value, error=error, traceback=traceback.format_exc())
            return Outcome(cell, State.FAILED, ran=True, error=error)
        state = cell_state(run_dir, check_lock=False)
        log_attempt(run_dir, "end", status=state.value)
        return Outcome(cell, state, ran=True, error=(read_summary(run_dir) or {}).get("error"))
    finally:
        lock.release()


def run_cells(cells: Sequence[Cell], *, nproc_per_node: int = 1, lock_wait_s: float = 0.5,
              command: str | None = None) -> list[Outcome]:
    """Run every cell that needs it, one after another; results.csv is rebuilt after each."""
    outcomes = []
    for i, cell in enumerate(cells, 1):
        state = cell_state(cell.run_dir)
        if state in DONE or state is State.FAILED:
            outcomes.append(Outcome(cell, state, ran=False))
            continue
        label = f"[{i}/{len(cells)}]"
        outcome = run_cell(cell, nproc_per_node=nproc_per_node, lock_wait_s=lock_wait_s, command=command,
                           label=label)
        outcomes.append(outcome)
        if outcome.ran:
            write_results(cell.config.out)
        note = f": {outcome.error}" if outcome.error else ""
        held = " (held by another process)" if outcome.state is State.RUNNING else ""
        print(f"{label} {cell.name}: {outcome.state.value}{held}{note}", flush=True)
    return outcomes


def prepare_retry(cells: Sequence[Cell]) -> list[Path]:
    """Set failed summaries aside (renamed, never deleted) so those cells run again."""
    renamed = []
    for cell in cells:
        if cell_state(cell.run_dir, check_lock=False) is not State.FAILED:
            continue
        with CellLock(lock_path(cell.run_dir)) as lock:
            if lock.acquire() and cell_state(cell.run_dir, check_lock=False) is State.FAILED:
                target = set_failed_aside(cell.run_dir)
                if target is not None:
                    log_attempt(cell.run_dir, "retry", failed_summary=target.name)
                    renamed.append(target)
    return renamed


# ---- the two ways to run a cell ----------------------------------------------------------------------
def _run_here(cell: Cell, command: str | None) -> None:
    from .run import run

    try:
        run(cell.config, resume=True, command=command, locked=True)  # run_cell holds the lock
    finally:
        gc.collect()  # the next cell should not inherit this one's tensors
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def cell_config_path(cell: Cell) -> Path:
    return Path(cell.config.out) / GRID_DIR / "cells" / f"{cell.name}.yaml"


def torchrun_command(cell: Cell, nproc_per_node: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            "-m", "bench", "run", "--config", str(cell_config_path(cell)), "--resume"]


def _run_torchrun(cell: Cell, nproc_per_node: int, lock: CellLock) -> None:
    path = cell_config_path(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_yaml(path, cell.config.resolved().to_dict())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env[LOCK_HELD_ENV] = str(lock.path)  # the run must not try to take the lock we hold for it
    # torchrun shares our lock (pass_fds) and is told to stop if we die (die_with_parent); its workers
    # stop when we or torchrun end, however (holder_env, bench.lifeline), so a killed grid process
    # cannot leave an orphan training the cell while another process takes it.
    env.update(holder_env(lock.path))
    proc = subprocess.run(torchrun_command(cell, nproc_per_node), env=env, pass_fds=(lock.fd,),
                          preexec_fn=die_with_parent)
    if proc.returncode < 0 and read_summary(cell.run_dir) is None:
        raise CellInterrupted(f"torchrun was killed by {_signal_name(-proc.returncode)}; "
                              "the cell resumes from its last checkpoint when the grid runs again")
    if proc.returncode != 0 and read_summary(cell.run_dir) is None:
        raise RuntimeError(f"torchrun exited with code {proc.returncode} before the run wrote a summary")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal
        return f"signal {number}"


class CellInterrupted(Exception):
    """The cell's processes were stopped from outside (torchrun killed by a signal): it stays interrupted."""
