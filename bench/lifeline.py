"""The lifeline of a grid cell's processes: none of them outlives the grid process holding the cell's lock.

A grid process holds the cell's lock (bench.cells) and starts `torchrun ... -m bench run`; torchrun starts
its workers in sessions of their own, so a SIGKILL of the grid, of the grid's process group or of torchrun
alone reaches none of them, and a worker left running would train a cell whose lock another process may
take. So:

- the grid starts torchrun (and the gpus launcher its workers) with `die_with_parent`, and names itself
  to the workers in SAFBENCH_LIFELINE (`holder_env`: pid and start time, so that a reused pid is never
  taken for it, and the cell's workers file);
- each worker, first thing (`hold()`, called by bench.run.Run):
  1. takes a shared flock on the workers file (<out>/.grid/locks/<run>.workers) and keeps it until it
     exits; whoever takes the cell's lock next waits until nobody holds that file (`workers_gone`, called
     by CellLock.acquire), so no worker of an earlier holder can still be writing when it starts;
  2. asks the kernel for SIGKILL when its parent, torchrun, dies (PR_SET_PDEATHSIG, Linux; torchrun
     starts its workers from its main thread, which lives as long as torchrun);
  3. checks that the holder is alive and that its parent is the holder's child (the torchrun the holder
     started); otherwise it stops at once;
  4. starts a daemon thread that blocks on pidfds of the holder and of torchrun (where pidfds are
     missing, polls them every 0.2 s) and ends the process as soon as either has ended.

A worker stopped this way exits at once, with one line on stderr and exit code LOST_EXIT, doing no
cleanup: checkpoint files are replaced atomically (bench.io), so the last checkpoint stays whole, and
the next holder removes leftover temporary files under the lock. Processes a worker forks (DataLoader
workers) share its hold on the workers file, so the next holder waits for them too (PyTorch stops them
within seconds of their parent). Without SAFBENCH_LIFELINE (a plain
`safbench run`, or a cell run inside the grid process) `hold()` does nothing.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import threading
import time
from pathlib import Path

from .errors import UsageError

LIFELINE_ENV = "SAFBENCH_LIFELINE"  # "<holder pid>:<holder start time>:<workers file>"
LOST_EXIT = 75  # EX_TEMPFAIL: the worker stopped because its holder or torchrun ended; the cell resumes later
_PR_SET_PDEATHSIG = 1

_held: int | None = None  # this worker's descriptor of the workers file, open while the process lives


def workers_path(lock: Path) -> Path:
    """The file every worker of the cell locked at `lock` (<run>.lock) holds shared while it lives."""
    return lock.with_suffix(".workers")


def holder_env(lock: Path) -> dict[str, str]:
    """For the environment of the torchrun this process starts while holding the cell lock at `lock`."""
    stat = _stat(os.getpid())
    return {LIFELINE_ENV: f"{os.getpid()}:{stat[19] if stat else ''}:{workers_path(lock)}"}


def die_with_parent() -> None:
    """In a child before exec (Linux): receive SIGTERM when the parent dies, even by SIGKILL (torchrun then
    stops its workers). Exits at once if the parent died before the request took effect."""
    parent = os.getppid()
    if _signal_on_parent_death(signal.SIGTERM) and os.getppid() != parent:
        os._exit(1)


def hold() -> None:
    """In a worker started by torchrun for a grid cell: live only as long as the lock holder and torchrun."""
    global _held
    value = os.environ.get(LIFELINE_ENV)
    if not value or _held is not None:
        return
    holder, started, path = _parse(value)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # before any check: a holder taking the lock after them waits for us
    _held = fd
    parent = os.getppid()
    _signal_on_parent_death(signal.SIGKILL)  # checked below: the parent may have died before this took effect
    watched = {holder: f"the grid process holding this cell (pid {holder}) has ended",
               parent: f"torchrun (pid {parent}) has ended"}
    pidfds = _pidfds(watched)  # opened before the checks, so they name the processes the checks saw
    if not _alive(holder, started):
        _lost(watched[holder])
    if os.getppid() != parent or (parent != holder and _parent_of(parent) not in (holder, None)):
        _lost(f"torchrun (pid {parent}) is not the one the grid process (pid {holder}) started: it has ended")
    threading.Thread(target=_watch, args=(watched, pidfds, parent), name="safbench-lifeline", daemon=True).start()


def workers_gone(lock: Path, wait_s: float, poll_s: float = 0.05) -> bool:
    """True once no process holds the workers file of the cell locked at `lock`, waiting up to `wait_s`."""
    try:
        fd = os.open(workers_path(lock), os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True  # dropped again when fd closes: the new holder's workers will share the file
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(poll_s)
    finally:
        os.close(fd)


# ---- inside ------------------------------------------------------------------------------------------------
def _parse(value: str) -> tuple[int, str, str]:
    pid, started, path = (value.split(":", 2) + ["", ""])[:3]
    if not pid.isdigit() or not path:
        raise UsageError(f"{LIFELINE_ENV}={value!r}: expected <pid>:<start time>:<workers file>, as a grid sets it")
    return int(pid), started, path


def _signal_on_parent_death(sig: int) -> bool:
    """PR_SET_PDEATHSIG: the kernel sends `sig` when the parent (the thread that forked us) ends. False where
    that is missing (not Linux): the watcher thread of `hold()` still covers workers."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: [0] state, [1] parent pid, [19] start time; None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _parent_of(pid: int) -> int | None:
    stat = _stat(pid)
    return int(stat[1]) if stat else None


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no /proc here: os.kill is all there is
    return stat[0] not in ("Z", "X") and (not started or stat[19] == started)


def _pidfds(watched: dict[int, str]) -> dict[int, int] | None:
    """pidfd -> pid for every watched process; None where pidfds are missing (not Linux >= 5.3)."""
    if not hasattr(os, "pidfd_open"):
        return None
    fds: dict[int, int] = {}
    for pid in watched:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            _lost(watched[pid])
        except OSError:  # e.g. ENOSYS on an old kernel
            for fd in fds:
                os.close(fd)
            return None
    return fds


def _watch(watched: dict[int, str], pidfds: dict[int, int] | None, parent: int) -> None:
    if pidfds is not None:
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():  # readable once the process has ended
                _lost(watched[pidfds[fd]])
    while True:
        for pid, what in watched.items():
            if (pid == parent and os.getppid() != parent) or not _alive(pid, ""):
                _lost(what)
        time.sleep(0.2)


def _lost(what: str) -> None:
    os.write(2, f"safbench: {what}; stopping this worker (the cell resumes from its last checkpoint)\n".encode())
    os._exit(LOST_EXIT)
