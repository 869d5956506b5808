"""Running grids here: skip/resume/retry, failures, results.csv, locks, kills, concurrent processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import bench.cell_runner
from bench.cells import State, cell_state, lock_holder, lock_path
from bench.cli import main
from bench.faultpoints import CRASH_ENV, CRASH_EXIT
from bench.grid import load_grid
from bench.results import collect_results
from bench.run import Run
from tests.bench.grid_util import (
    REPO,
    attempts,
    bench_cmd,
    cli_env,
    metrics,
    run_cli,
    start_events,
    summaries,
    write_grid,
)


def _fail_method(monkeypatch: pytest.MonkeyPatch, method: str, exc: type[BaseException] = RuntimeError,
                 at_epoch: int = 0, message: str = "injected failure") -> None:
    original = Run._epoch

    def epoch(self, e):
        if self.config.method == method and e == at_epoch:
            raise exc(message)
        return original(self, e)

    monkeypatch.setattr(Run, "_epoch", epoch)


# ---- local runs, results.csv --------------------------------------------------------------------------
def test_grid_runs_every_cell_and_results_csv_equals_the_summaries(tmp_path: Path, monkeypatch) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"method": ["sgd", "sam", "saf"]},
                      per_method={"saf": {"e_tilde": 1, "e_start": 1}, "sam": {"rho": 0.1}})
    out = tmp_path / "out"
    rows_after_each_write = []
    real_write = bench.cell_runner.write_results

    def spy(folder):
        rows_after_each_write.append(len(pd.read_csv(real_write(folder))))

    monkeypatch.setattr(bench.cell_runner, "write_results", spy)
    assert main(["grid", str(path), "--out", str(out)]) == 0
    assert rows_after_each_write == [1, 2, 3]  # rebuilt after every cell

    cells = load_grid(path).cells(out=str(out))
    assert all(cell_state(c.run_dir) is State.FINISHED for c in cells)
    # Add a flatness measurement by hand: its fields join the row on the next rebuild.
    (cells[0].run_dir / "hessian.json").write_text(json.dumps({"lambda_max": 12.5, "trace": 99.0, "epoch": 2}))
    inode = (out / "results.csv").stat().st_ino
    assert main(["grid", str(path), "--out", str(out)]) == 0
    assert (out / "results.csv").stat().st_ino != inode  # replaced by a rename, never edited in place

    table = pd.read_csv(out / "results.csv")
    by_dir = {row["run_dir"]: row for row in table.to_dict("records")}
    expected = summaries(out)
    assert set(by_dir) == set(expected) == {c.name for c in cells}
    for name, summary in expected.items():
        row = by_dir[name]
        for key in ("status", "method", "seed", "config_hash", "final_test_acc", "final_train_loss",
                    "best_test_acc", "epochs_completed", "world_size"):
            assert row[key] == summary[key], (name, key)
        for key, value in summary["hparams"].items():
            assert row[f"hp_{key}"] == value, (name, key)
        for key, value in summary["extras"].items():
            assert row[key] == value
    assert by_dir[cells[0].name]["lambda_max"] == 12.5 and by_dir[cells[0].name]["hessian_trace"] == 99.0
    assert pd.isna(by_dir[cells[1].name]["lambda_max"])
    assert collect_results(out)["run_dir"].tolist() == sorted(expected)


def test_rerun_skips_finished_and_diverged_cells(tmp_path: Path) -> None:
    # lr 1e9 makes the loss overflow in the first epoch: a diverged run, which is a result.
    path = write_grid(tmp_path / "g.yaml", grid={"lr": [0.1, 1.0e9]})
    out = tmp_path / "out"
    assert main(["grid", str(path), "--out", str(out)]) == 0
    cells = load_grid(path).cells(out=str(out))
    assert [cell_state(c.run_dir) for c in cells] == [State.FINISHED, State.DIVERGED]
    logs = [(c.run_dir / "attempts.jsonl").read_text() for c in cells]
    stamps = [(c.run_dir / "summary.json").stat().st_mtime_ns for c in cells]
    assert main(["grid", str(path), "--out", str(out)]) == 0
    assert [(c.run_dir / "attempts.jsonl").read_text() for c in cells] == logs
    assert [(c.run_dir / "summary.json").stat().st_mtime_ns for c in cells] == stamps


def test_failed_cell_does_not_stop_the_others_and_retry_keeps_every_old_summary(
        tmp_path: Path, monkeypatch, capsys) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"method": ["sam", "sgd"]})
    out = tmp_path / "out"
    sam, sgd = load_grid(path).cells(out=str(out))
    _fail_method(monkeypatch, "sam")
    assert main(["grid", str(path), "--out", str(out)]) == 1
    assert cell_state(sam.run_dir) is State.FAILED and cell_state(sgd.run_dir) is State.FINISHED
    first_failure = (sam.run_dir / "summary.json").read_text()
    assert "injected failure" in json.loads(first_failure)["error"]
    assert "injected failure" in attempts(sam.run_dir)[-1]["traceback"]

    # Without --retry-failed a failed cell stays as it is.
    assert main(["grid", str(path), "--out", str(out)]) == 1
    assert len(start_events(sam.run_dir)) == 1 and "--retry-failed" in capsys.readouterr().out

    # Retried and failing again: the first failure is kept aside, the new one is the summary.
    _fail_method(monkeypatch, "sam", message="injected failure, again")
    assert main(["grid", str(path), "--out", str(out), "--retry-failed"]) == 1
    assert (sam.run_dir / "summary.failed-1.json").read_text() == first_failure
    second_failure = (sam.run_dir / "summary.json").read_text()
    assert "injected failure, again" in json.loads(second_failure)["error"]

    monkeypatch.undo()
    assert main(["grid", str(path), "--out", str(out), "--retry-failed"]) == 0
    assert (sam.run_dir / "summary.failed-1.json").read_text() == first_failure
    assert (sam.run_dir / "summary.failed-2.json").read_text() == second_failure
    assert cell_state(sam.run_dir) is State.FINISHED
    assert [a["event"] for a in attempts(sam.run_dir)] == ["start", "end", "retry", "start", "end",
                                                           "retry", "start", "end"]
    assert len(start_events(sgd.run_dir)) == 1  # the finished cell was never touched again
    assert set(pd.read_csv(out / "results.csv")["status"]) == {"finished"}


def test_failure_before_the_run_starts_is_recorded_as_failed(tmp_path: Path, monkeypatch) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"method": ["sgd", "sam"]})
    out = tmp_path / "out"
    import bench.run as run_module

    real = run_module.create_data

    def create_data(name, **kw):
        if kw["seed"] == 0 and monkeypatch_state["fail"]:
            monkeypatch_state["fail"] = False
            raise FileNotFoundError("no such data")
        return real(name, **kw)

    monkeypatch_state = {"fail": True}
    monkeypatch.setattr(run_module, "create_data", create_data)
    assert main(["grid", str(path), "--out", str(out)]) == 1
    first, second = load_grid(path).cells(out=str(out))
    summary = json.loads((first.run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "no such data" in summary["error"]
    assert summary["config_hash"] == first.hash
    assert cell_state(second.run_dir) is State.FINISHED
    table = pd.read_csv(out / "results.csv").set_index("run_dir")
    assert table.loc[first.name, "status"] == "failed" and table.loc[second.name, "status"] == "finished"


def test_interrupted_cell_resumes_from_its_checkpoint_with_equal_metrics(tmp_path: Path, monkeypatch) -> None:
    path = write_grid(tmp_path / "g.yaml", base={"epochs": 3}, grid={"method": ["saf", "sgd"]},
                      per_method={"saf": {"e_tilde": 1, "e_start": 1}})
    assert main(["grid", str(path), "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    _fail_method(monkeypatch, "saf", KeyboardInterrupt, at_epoch=2)
    assert main(["grid", str(path), "--out", str(out)]) == 130
    saf, sgd = load_grid(path).cells(out=str(out))
    assert cell_state(saf.run_dir) is State.INTERRUPTED and cell_state(sgd.run_dir) is State.PENDING
    monkeypatch.undo()
    assert main(["grid", str(path), "--out", str(out)]) == 0
    assert [a["resume"] for a in start_events(saf.run_dir)] == [False, True]
    for cell in (saf, sgd):
        pd.testing.assert_frame_equal(metrics(cell.run_dir), metrics(tmp_path / "ref" / cell.name))


# ---- locks ---------------------------------------------------------------------------------------
HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.write(fd, f"somehost {os.getpid()} then".encode())
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding a cell's lock, the way a grid process does (plain flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"seed": [0]})
    out = tmp_path / "out"
    (cell,) = load_grid(path).cells(out=str(out))
    holder = _hold_lock(lock_path(cell.run_dir))
    cell.run_dir.mkdir(parents=True)  # it had started
    assert cell_state(cell.run_dir) is State.RUNNING
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f"somehost {holder.pid}" in lock_path(cell.run_dir).read_text()  # the dead holder's note stays
    assert lock_holder(lock_path(cell.run_dir)) is None
    assert cell_state(cell.run_dir) is State.INTERRUPTED
    assert main(["grid", str(path), "--out", str(out)]) == 0
    assert cell_state(cell.run_dir) is State.FINISHED
    (start,) = start_events(cell.run_dir)
    assert f"somehost {holder.pid}" in start["taken_over_from"]


def test_cell_held_by_a_live_process_is_left_to_it(tmp_path: Path, capsys) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"seed": [0, 1]})
    out = tmp_path / "out"
    held, free = load_grid(path).cells(out=str(out))
    holder = _hold_lock(lock_path(held.run_dir))
    try:
        assert main(["grid", str(path), "--out", str(out)]) == 0
        assert cell_state(held.run_dir) is State.RUNNING and not held.run_dir.exists()
        assert cell_state(free.run_dir) is State.FINISHED
        assert "held by another process" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
    assert main(["grid", str(path), "--out", str(out)]) == 0
    assert cell_state(held.run_dir) is State.FINISHED and len(start_events(free.run_dir)) == 1


# ---- processes: kills and concurrency -------------------------------------------------------------------
def _check_complete(out: Path, cells, reference: Path | None = None) -> None:
    """Every cell finished, every file whole, nothing left over; metrics equal the reference's."""
    for cell in cells:
        d = cell.run_dir
        assert cell_state(d) is State.FINISHED, d
        summary = json.loads((d / "summary.json").read_text())
        table = metrics(d)
        assert table["epoch"].tolist() == list(range(cell.config.epochs))
        state = torch.load(d / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == cell.config.epochs
        assert not list(d.glob(".*.tmp")), list(d.glob(".*.tmp"))
        if reference is not None:
            pd.testing.assert_frame_equal(table, metrics(reference / cell.name))
            ref = json.loads((reference / cell.name / "summary.json").read_text())
            for key in ("final_test_acc", "final_test_loss", "final_train_loss", "best_test_acc"):
                assert summary[key] == ref[key], (cell.name, key)
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["run_dir"]) == sorted(c.name for c in cells)
    assert set(results["status"]) == {"finished"}


# Each grid process dies (os._exit: like SIGKILL, no cleanup) at the next point of this list; each point is
# reached by the first unfinished cell, which resumes from where the previous death left it.
KILL_POINTS = (
    "epoch-2",  # two epochs checkpointed
    "write-checkpoint.pt",  # epoch 2 trained; its checkpoint half written (the temporary file only)
    "write-metrics.csv",  # epoch 2 trained again and checkpointed; metrics.csv half written
    "before-summary",  # epoch 3 trained and checkpointed, metrics.csv complete, no summary.json
    "write-summary.json",  # summary.json half written
    "write-results.csv",  # the cell finished; results.csv half written
    "after-checkpoint-e1",  # the next cell: its first checkpoint written, metrics.csv not
)


@pytest.mark.slow
def test_killed_at_each_write_point_then_rerun_loses_nothing(tmp_path: Path) -> None:
    """Grid processes killed, one after another, at every kind of point where a file is half written or one
    file is ahead of another; then one more run. Every cell ends equal to the uninterrupted reference,
    with no temporary file left. The kills land by crash hooks (bench.faultpoints), never by timing."""
    path = write_grid(tmp_path / "g.yaml", base={"epochs": 4, "train_subset": 96},
                      grid={"method": ["sgd", "sam", "saf", "mesa"]},
                      per_method={"saf": {"e_tilde": 1, "e_start": 1}, "mesa": {"e_start": 1}})
    out, ref = tmp_path / "out", tmp_path / "ref"
    cells = load_grid(path).cells(out=str(out))
    assert main(["grid", str(path), "--out", str(ref)]) == 0  # the uninterrupted reference
    for point in KILL_POINTS:
        killed = subprocess.run(bench_cmd("grid", str(path), "--out", str(out)), cwd=REPO,
                                env={**cli_env(), CRASH_ENV: point}, capture_output=True, text=True, timeout=300)
        assert killed.returncode == CRASH_EXIT, (point, killed.stdout[-2000:], killed.stderr[-2000:])
    assert sum(cell_state(c.run_dir) is State.FINISHED for c in cells) == 1  # the rest is still to do
    assert run_cli("grid", str(path), "--out", str(out)).returncode == 0
    all_starts = [a for c in cells for a in start_events(c.run_dir)]
    assert len(all_starts) == len(cells) + len(KILL_POINTS) - 1  # each kill cut an attempt, but results.csv's
    _check_complete(out, cells, reference=ref)


@pytest.mark.slow
def test_two_concurrent_grid_processes_run_every_cell_exactly_once(tmp_path: Path) -> None:
    # cnn_small cells of ~2 s each: long enough that both processes are up before the work runs out.
    path = write_grid(tmp_path / "g.yaml", base={"model": "cnn_small", "epochs": 3, "train_subset": 128},
                      grid={"method": ["sgd", "sam"], "seed": [0, 1, 2]})
    out = tmp_path / "out"
    procs = [subprocess.Popen(bench_cmd("grid", str(path), "--out", str(out)), cwd=REPO, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    cells = load_grid(path).cells(out=str(out))
    starts = {c.name: start_events(c.run_dir) for c in cells}
    assert {name: len(s) for name, s in starts.items()} == {c.name: 1 for c in cells}
    # Both processes did work, so the single starts above were decided by the locks.
    assert len({s[0]["pid"] for s in starts.values()}) == 2, logs
    _check_complete(out, cells)
