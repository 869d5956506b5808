"""A cell's state on disk, its lock, and its attempt log.

State, read from the run directory and the lock (never stored, so it cannot go stale):
    finished / diverged / failed   summary.json says so (diverged is a result, not an error)
    running                        no summary, and a live process holds the cell's lock
    interrupted                    no summary, no live holder, but the run directory exists
    pending                        nothing yet
    damaged                        a file of the run (summary, or else config, metrics, checkpoint) exists
                                   but cannot be read (bench.damage): the user must act first

Locks are `fcntl.flock` on <out>/.grid/locks/<run name>.lock. The kernel drops a flock when its
holder dies, even by SIGKILL, so a lock left by a dead process is free for the next grid process
to take; the file's text (host, pid, time) is only a note for people and for `--dry-run`. A taker
also waits until no torchrun worker of an earlier holder is alive (<run name>.workers, bench.lifeline). Lock
files are never deleted: unlinking a file someone may be waiting on lets two processes hold "the"
lock on different inodes.

File-system caveats. Local disks: exact. NFS: Linux maps flock onto NFS byte-range locks (v3 via
lockd, v4 natively), which do work across hosts; but a crashed *client's* lock lives on until the
server's lease or grace period ends (~90 s on NFSv4), so a requeued cell waits for it (see
`CellLock.acquire(wait_s)`). Mounts with `nolock` or `local_lock=flock`, and Lustre with
`localflock`, make flock per-host only: two hosts could then run one cell at once. Use such
folders from one host, or mount Lustre with `-o flock`. A file system that refuses flock makes
the grid stop with a one-line error rather than run unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from .damage import DamagedFile, damaged_files
from .errors import UsageError
from .lifeline import workers_gone
from .records import ATTEMPTS, CHECKPOINT, CONFIG, GRID_DIR, METRICS, SUMMARY, failed_summary
from .rundir import config_summary, read_summary, write_summary


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FINISHED = "finished"
    DIVERGED = "diverged"
    FAILED = "failed"
    DAMAGED = "damaged"


DONE = (State.FINISHED, State.DIVERGED)


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / GRID_DIR / "locks" / f"{run_dir.name}.lock"


def cell_state(run_dir: Path, *, check_lock: bool = True) -> State:
    """The state of a run directory; reads only (a missing lock file is not created)."""
    try:
        summary = read_summary(run_dir, strict=True)
    except DamagedFile:
        return State.DAMAGED
    if summary is not None:
        status = summary.get("status")
        return State(status) if status in (State.FINISHED, State.DIVERGED) else State.FAILED
    if check_lock and lock_holder(lock_path(run_dir)) is not None:
        return State.RUNNING
    if run_dir.is_dir():
        return State.DAMAGED if damaged_files(run_dir, (CONFIG, METRICS, CHECKPOINT)) else State.INTERRUPTED
    return State.PENDING


def lock_holder(path: Path) -> str | None:
    """'host pid since' of a live holder of the lock at `path`, or None if nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            # A shared probe: fails only while someone holds it exclusively. It is held for
            # microseconds, and `acquire` retries briefly, so it cannot make a runner skip a cell.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class CellLock:
    """An exclusive, non-inherited flock on one cell; released on `release()` or on process death."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.previous = ""  # the note left by the last holder (e.g. a dead process's host and pid)

    def acquire(self, wait_s: float = 0.5, poll_s: float = 0.1) -> bool:
        """Take the lock, polling for up to `wait_s` seconds; False if another process keeps it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(poll_s)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise UsageError(f"cannot lock {self.path}: the file system does not support flock "
                                     "(NFS mounted with nolock? Lustre without -o flock?)") from None
                raise
        # The lock is ours; a torchrun worker of a dead holder may still be stopping (bench.lifeline).
        if not workers_gone(self.path, max(0.0, deadline - time.monotonic()), poll_s):
            os.close(fd)
            return False
        self.previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        note = f"{platform.node()} {os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> CellLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- the attempt log and leftovers -------------------------------------------------------------------
def log_attempt(run_dir: Path, event: str, **fields: Any) -> None:
    """Append one JSON line; O_APPEND makes concurrent appends land whole, never overwritten."""
    run_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"event": event, "time": time.time(), "host": platform.node(), "pid": os.getpid(),
                       **fields}, default=str) + "\n"
    fd = os.open(run_dir / ATTEMPTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (run_dir / ATTEMPTS).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash is a note lost, not a reason to fail
    return out


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete temporary files of atomic writes a killed process left; call only under the cell lock."""
    removed = []
    if run_dir.is_dir():
        for tmp in run_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def set_failed_aside(run_dir: Path) -> Path | None:
    """Rename a failed summary.json to summary.failed-<n>.json (never overwriting) so the cell reruns."""
    summary = run_dir / SUMMARY
    if not summary.exists():
        return None
    n = 1
    while (target := failed_summary(run_dir, n)).exists():
        n += 1
    os.rename(summary, target)
    return target


def write_failed_summary(run_dir: Path, config: Any, error: str, command: str | None) -> None:
    """For a cell that failed before its run could write a summary (bad data path, import error...)."""
    import torch

    from .provenance import provenance

    config = config.resolved()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_summary(run_dir, {**config_summary(config, config.config_hash(), run_dir), "epochs_completed": 0,
                            "status": "failed", "error": error, **provenance(torch.device("cpu"), command)})


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT).exists()
