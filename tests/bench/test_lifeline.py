"""No process of a grid cell outlives the process holding the cell's lock (bench.lifeline).

The fast tests build the chain by hand: a holder (takes the cell lock, names itself in the environment)
starts a middle process standing in for torchrun, which starts a worker in a session of its own. The slow
ones run a real 2-process torchrun cell under a grid, held at a point of its choosing by a pause hook
(SAFBENCH_PAUSE_AT), kill the grid, its whole process group or torchrun, and check that every process of
the cell is gone within a bounded wait and that running the grid again resumes the cell to exactly the
uninterrupted run's metrics. The same for a submitit task preempted (SIGUSR2) while it runs the cell.
Nothing waits on timing: each kill lands while the cell is held at the hook.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cells import CellLock, State, cell_state, lock_holder, lock_path
from bench.cli import main
from bench.faultpoints import PAUSE_ENV
from bench.grid import load_grid
from bench.lifeline import LIFELINE_ENV, LOST_EXIT, holder_env
from tests.bench.grid_util import REPO, attempts, bench_cmd, cli_env, metrics, start_events, write_grid

WAIT_S = 60  # for processes to be gone after a kill: generous, the machine may be loaded


def _wait_for(predicate, timeout: float = 300, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody has reaped yet (a container's init may never reap)."""
    stat = _stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a zombie's command line is empty)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (proc / "cmdline").read_bytes() and not _gone(int(proc.name)):
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


# ---- the chain by hand: holder -> middle ("torchrun") -> worker --------------------------------------------
HOLDER = """
import os, subprocess, sys, time
from pathlib import Path
from bench.cells import CellLock
from bench.lifeline import holder_env
lock = CellLock(Path(sys.argv[1]))
assert lock.acquire()
subprocess.Popen([sys.executable, "-c", sys.argv[2], *sys.argv[3:]], env={**os.environ, **holder_env(lock.path)})
time.sleep(600)
"""
MIDDLE = """
import subprocess, sys, time
err = open(sys.argv[2], "w")
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[3]], stderr=err, start_new_session=True)
time.sleep(600)
"""
WORKER = """
import os, sys, time
from bench.lifeline import hold
hold()
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(600)
"""


@pytest.mark.parametrize("killed", ["holder", "torchrun"])
def test_a_worker_stops_when_its_lock_holder_or_its_torchrun_dies(tmp_path: Path, killed: str) -> None:
    lock = lock_path(tmp_path / "out" / "cell")
    ready, err = tmp_path / "worker.pid", tmp_path / "worker.err"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), MIDDLE, WORKER, str(err), str(ready)],
                              cwd=REPO, env=env)
    try:
        _wait_for(lambda: ready.exists() and ready.read_text() or holder.poll() is not None, what="the worker")
        assert holder.poll() is None
        worker = int(ready.read_text())
        middle = int(_stat(worker)[1])
        assert int(_stat(middle)[1]) == holder.pid  # the chain the grid builds: holder -> torchrun -> worker
        assert not CellLock(lock).acquire(wait_s=0)
        os.kill(holder.pid if killed == "holder" else middle, signal.SIGKILL)
        _wait_for(lambda: _gone(worker), timeout=WAIT_S, what="the worker to stop")
        line = err.read_text().strip()
        if killed == "holder":  # the watcher thread stopped it (torchrun lives on here), saying why
            assert line.startswith("safbench: the grid process holding this cell") \
                and line.endswith("resumes from its last checkpoint)"), line
            # The lock is free, and a new holder finds no worker of the old one.
            with CellLock(lock) as again:
                assert again.acquire(wait_s=WAIT_S)
        else:  # the kernel's SIGKILL (PR_SET_PDEATHSIG) or the watcher thread, whichever came first
            assert line == "" or line.startswith(f"safbench: torchrun (pid {middle}) has ended"), line
    finally:
        holder.kill()
        holder.wait()
        for pid in _processes_mentioning(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)


def test_the_next_holder_waits_for_the_workers_of_the_last(tmp_path: Path) -> None:
    """A worker whose holder has ended but which has not stopped yet keeps the cell from being taken."""
    lock = lock_path(tmp_path / "out" / "cell")
    lock.parent.mkdir(parents=True)
    env = {**os.environ, LIFELINE_ENV: holder_env(lock)[LIFELINE_ENV]}  # this test is the holder
    ready = tmp_path / "ready"
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(ready)], cwd=REPO, env=env)
    try:
        _wait_for(lambda: ready.exists() or worker.poll() is not None, what="the worker")
        assert worker.poll() is None
        with CellLock(lock) as taker:
            assert not taker.acquire(wait_s=0.2)  # the lock file is free, but a worker still lives
            worker.kill()
            worker.wait()
            assert taker.acquire(wait_s=0)
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit below
def test_without_pidfds_the_watcher_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where pidfds are missing (not Linux >= 5.3) the watcher polls; it ends a process as pidfds would."""
    import bench.lifeline as lifeline

    lost: list[str] = []

    def record(what: str) -> None:
        lost.append(what)
        raise SystemExit  # ends the watcher thread instead of this process

    monkeypatch.setattr(lifeline, "_lost", record)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        watcher = threading.Thread(target=lifeline._watch, args=({child.pid: "the child has ended"}, None, 0))
        watcher.start()
        assert not lost and watcher.is_alive()
        child.kill()  # a zombie until reaped below: the watcher must take that for ended too
        watcher.join(timeout=WAIT_S)
        assert lost == ["the child has ended"]
    finally:
        child.kill()
        child.wait()


def test_a_worker_whose_holder_has_already_ended_stops_at_once(tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(ended.stdout)
    env = {**os.environ, LIFELINE_ENV: f"{pid}::{tmp_path / 'cell.workers'}"}
    proc = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "ready")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == LOST_EXIT
    assert proc.stderr.strip().startswith(f"safbench: the grid process holding this cell (pid {pid}) has ended")
    assert not (tmp_path / "ready").exists()


def test_a_bad_lifeline_value_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(bench_cmd("run", "--method", "sgd", "--dataset", "synthetic", "--model", "mlp_tiny",
                                    "--device", "cpu", "--out", str(tmp_path / "out")),
                          cwd=REPO, env={**cli_env(), LIFELINE_ENV: "not-a-pid"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"{LIFELINE_ENV}='not-a-pid'" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


# ---- a real 2-process torchrun cell under a grid ------------------------------------------------------------
# A SAF cell (its store is sharded per rank) of three epochs on two gloo processes.
GRID = {"base": {"epochs": 3, "train_subset": 64}, "grid": {"method": ["saf"]},
        "per_method": {"saf": {"e_tilde": 1, "e_start": 1}}}


def _grid_args(path: Path, out: Path) -> tuple[str, ...]:
    return ("grid", str(path), "--out", str(out), "--nproc-per-node", "2")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The metrics of the cell run uninterrupted on two processes."""
    tmp = tmp_path_factory.mktemp("lifeline-ref")
    path, out = write_grid(tmp / "g.yaml", **GRID), tmp / "out"
    proc = subprocess.run(bench_cmd(*_grid_args(path, out)), cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (cell,) = load_grid(path).cells(out=str(out))
    return metrics(cell.run_dir)


def _children(pid: int, among: list[int]) -> list[int]:
    return [p for p in among if (stat := _stat(p)) is not None and int(stat[1]) == pid]


def _cell_processes(out: Path, grid: int) -> tuple[int, list[int]]:
    """torchrun (the grid's child) and its two workers: processes whose command line names `out`."""
    mentioning = _processes_mentioning(str(out))
    (torchrun,) = _children(grid, mentioning)
    workers = _children(torchrun, mentioning)
    assert len(workers) == 2, (torchrun, mentioning)
    return torchrun, workers


def _resumes_to_the_reference(path: Path, out: Path, reference: pd.DataFrame) -> None:
    (cell,) = load_grid(path).cells(out=str(out))
    proc = subprocess.run(bench_cmd(*_grid_args(path, out)), cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((cell.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert [s["resume"] for s in start_events(cell.run_dir)] == [False, True]
    assert (cell.run_dir / "checkpoint-rank1-e3.pt").exists()  # rank 1's share of the SAF store
    assert pd.read_csv(out / "results.csv")["world_size"].tolist() == [2]
    pd.testing.assert_frame_equal(metrics(cell.run_dir), reference)


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("killed", ["grid", "process group", "torchrun"])
def test_no_process_of_a_torchrun_cell_outlives_a_kill(tmp_path: Path, killed: str, reference: pd.DataFrame) -> None:
    path, out = write_grid(tmp_path / "g.yaml", **GRID), tmp_path / "out"
    (cell,) = load_grid(path).cells(out=str(out))
    # Rank 0 stops right after the first checkpoint (a barrier this test never opens), rank 1 waits for it in
    # the next epoch's first all-reduce: the kill lands there every time, not wherever the load puts it.
    entered = tmp_path / "checkpointed"
    env = {**cli_env(), PAUSE_ENV: f"after-checkpoint-e1@0:{entered}:{tmp_path / 'never'}"}
    log = tmp_path / "grid.log"
    with open(log, "w") as fh:  # a session of its own: its process group is the grid and torchrun only
        grid = subprocess.Popen(bench_cmd(*_grid_args(path, out)), cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: entered.exists() or grid.poll() is not None, what="the first DDP checkpoint")
        assert grid.poll() is None, log.read_text()
        torchrun, workers = _cell_processes(out, grid.pid)
        if killed == "grid":
            os.kill(grid.pid, signal.SIGKILL)
        elif killed == "process group":  # kill -9 -- -PGID: the grid and torchrun; the workers have own sessions
            os.killpg(grid.pid, signal.SIGKILL)
        else:
            os.kill(torchrun, signal.SIGKILL)
        grid.wait(timeout=WAIT_S)  # killed; or, torchrun killed, the grid ends on its own
        # Neither torchrun nor any worker goes on (nor a DataLoader worker: any process naming the out folder).
        # The lock too: a process's files close when its last thread has exited, which can be after its main
        # thread already shows as a zombie (what _gone sees).
        _wait_for(lambda: all(_gone(p) for p in [torchrun, *workers]) and not _processes_mentioning(str(out))
                  and lock_holder(lock_path(cell.run_dir)) is None,
                  timeout=WAIT_S, what="every process of the cell to end and the cell's lock to be free")
    finally:
        for pid in [grid.pid] * (grid.poll() is None) + _processes_mentioning(str(out)):
            os.kill(pid, signal.SIGKILL)
        grid.wait()
    # The cell's lock is free, and nothing was written after the checkpoint of epoch 1.
    assert cell_state(cell.run_dir) is State.INTERRUPTED
    assert torch.load(cell.run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (cell.run_dir / "metrics.csv").exists() and not (cell.run_dir / "summary.json").exists()
    if killed == "torchrun":  # the grid saw it: the cell is interrupted (resumable), not failed
        assert grid.returncode == 0, log.read_text()
        assert "interrupted: torchrun was killed by SIGKILL" in log.read_text()
        assert [a["event"] for a in attempts(cell.run_dir)] == ["start", "interrupted"]
    _resumes_to_the_reference(path, out, reference)


@pytest.mark.slow
@pytest.mark.ddp
def test_a_preempted_slurm_task_running_a_torchrun_cell_requeues_and_resumes(
        tmp_path: Path, reference: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    path, out = write_grid(tmp_path / "g.yaml", **GRID), tmp_path / "out"
    (cell,) = load_grid(path).cells(out=str(out))
    entered = tmp_path / "checkpointed"
    # submitit's local executor passes our environment on to its tasks (and they to torchrun).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(PAUSE_ENV, f"after-checkpoint-e1@0:{entered}:{tmp_path / 'never'}")
    codes: list[int] = []
    submit = threading.Thread(target=lambda: codes.append(main(
        ["grid", str(path), "--out", str(out), "--launcher", "slurm", "--cluster", "local", "--wait",
         "--time-min", "10", "--nproc-per-node", "2"])))
    submit.start()
    _wait_for(lambda: entered.exists() or not submit.is_alive(), what="the task's first checkpoint")
    assert submit.is_alive()
    (first,) = start_events(cell.run_dir)  # the task process, holding the cell's lock
    torchrun, workers = _cell_processes(out, first["pid"])
    # What slurm sends before a preemption or a timeout. (submitit's LocalJob._interrupt sends it to the local
    # controller, which does not forward it and dies of it; slurm signals the task, as the controller does
    # itself near a timeout.) The task checkpoints its submission, torchrun is stopped, the task requeues.
    os.kill(first["pid"], signal.SIGUSR2)
    submit.join(timeout=600)
    assert codes == [0]
    assert all(_gone(pid) for pid in [first["pid"], torchrun, *workers])
    events = [(a["event"], a.get("resume")) for a in attempts(cell.run_dir)]
    assert events == [("start", False), ("interrupted", None), ("start", True), ("end", None)], events
    assert cell_state(cell.run_dir) is State.FINISHED
    summary = json.loads((cell.run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_completed"] == 3
    pd.testing.assert_frame_equal(metrics(cell.run_dir), reference)
