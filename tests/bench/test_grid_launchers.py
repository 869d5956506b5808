"""Launchers end to end on the CPU: submitit's local executor (with a preempted task), torchrun
runs on two gloo processes, and the gpus launcher's workers. Kills and preemptions of torchrun cells:
tests/bench/test_lifeline.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cells import State, cell_state
from bench.cli import main
from bench.faultpoints import PAUSE_ENV
from bench.grid import load_grid
from tests.bench.grid_util import (
    REPO,
    attempts,
    bench_cmd,
    cli_env,
    metrics,
    snapshot,
    start_events,
    write_grid,
)


def _wait_for(predicate, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def single_threaded_children(monkeypatch: pytest.MonkeyPatch) -> None:
    # submitit's local executor passes our environment on to its tasks.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# ---- slurm through submitit's local executor ----------------------------------------------------------
@pytest.mark.slow
def test_submitit_local_array_runs_a_small_grid(tmp_path: Path, single_threaded_children, capsys) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"method": ["sgd", "saf"]},
                      per_method={"saf": {"e_tilde": 1, "e_start": 1}})
    out = tmp_path / "out"
    code = main(["grid", str(path), "--out", str(out), "--launcher", "slurm", "--cluster", "local", "--wait",
                 "--time-min", "10"])
    assert code == 0, capsys.readouterr().out
    cells = load_grid(path).cells(out=str(out))
    assert all(cell_state(c.run_dir) is State.FINISHED for c in cells)
    assert sorted(pd.read_csv(out / "results.csv")["run_dir"]) == sorted(c.name for c in cells)
    # Submitting again finds nothing to do.
    assert main(["grid", str(path), "--out", str(out), "--launcher", "slurm", "--cluster", "local"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


@pytest.mark.slow
def test_preempted_slurm_task_is_requeued_and_resumes_from_its_checkpoint(
        tmp_path: Path, single_threaded_children, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_grid(tmp_path / "g.yaml", base={"epochs": 3}, grid={"method": ["saf"]},
                      per_method={"saf": {"e_tilde": 1, "e_start": 1}})
    out = tmp_path / "out"
    (cell,) = load_grid(path).cells(out=str(out))
    # The task stops right after its first checkpoint (a barrier this test never opens), so the signal lands
    # there every time; the requeued task resumes at epoch 1 and never reaches that point again.
    entered = tmp_path / "checkpointed"
    monkeypatch.setenv(PAUSE_ENV, f"after-checkpoint-e1:{entered}:{tmp_path / 'never'}")
    import threading

    codes: list[int] = []
    submit = threading.Thread(target=lambda: codes.append(main(
        ["grid", str(path), "--out", str(out), "--launcher", "slurm", "--cluster", "local", "--wait",
         "--time-min", "10"])))
    submit.start()
    _wait_for(lambda: entered.exists() or not submit.is_alive(), what="the task's first checkpoint")
    assert submit.is_alive()
    (first,) = start_events(cell.run_dir)
    # What slurm sends before a timeout or a preemption, to the task (submitit's LocalJob._interrupt sends it
    # to the local controller, which does not forward it: the controller itself signals its tasks so).
    os.kill(first["pid"], signal.SIGUSR2)
    submit.join(timeout=300)
    assert codes == [0]
    events = [(a["event"], a.get("resume")) for a in attempts(cell.run_dir)]
    assert events == [("start", False), ("interrupted", None), ("start", True), ("end", None)], events
    assert cell_state(cell.run_dir) is State.FINISHED
    monkeypatch.delenv(PAUSE_ENV)
    assert main(["grid", str(path), "--out", str(tmp_path / "ref")]) == 0  # uninterrupted, in-process
    pd.testing.assert_frame_equal(metrics(cell.run_dir), metrics(tmp_path / "ref" / cell.name))


# ---- torchrun cells ---------------------------------------------------------------------------------------
# Killing the grid, its process group or torchrun under a torchrun cell: tests/bench/test_lifeline.py.


def _full_test_set_eval(run_dir: Path) -> tuple[float, float]:
    """(loss, accuracy) of the run's final weights over its whole test set, in this one process."""
    import torch
    import yaml

    from bench.data import create_data
    from bench.models import create_model

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = create_data(cfg["dataset"], root=None, batch_size=cfg["batch_size"], device="cpu", seed=cfg["seed"],
                       train_subset=cfg["train_subset"], num_workers=0)
    net = create_model(cfg["model"], num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size)
    net.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"])
    net.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in data.test_batches():
            logits = net(x)
            loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
    return loss / count, correct / count


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_run_without_resume_into_a_fresh_directory(tmp_path: Path) -> None:
    # Rank 0 writes config.yaml as soon as it may; a rank that looked later must not take the directory
    # for someone else's. A second run into the same directory is refused by both ranks.
    out = tmp_path / "out"
    run_args = ["run", "--method", "sgd", "--dataset", "synthetic", "--model", "mlp_tiny", "--epochs", "1",
                "--batch-size", "16", "--train-subset", "64", "--device", "cpu", "--num-workers", "0",
                "--no-progress", "--out", str(out)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bench"]
    first = subprocess.run([*torchrun, *run_args], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                           timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    (run_dir,) = (p for p in out.iterdir() if not p.name.startswith("."))  # .grid: the run's lock
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    # Each rank evaluated half the test set; the summed shares equal one process evaluating it all.
    loss, acc = _full_test_set_eval(run_dir)
    last = pd.read_csv(run_dir / "metrics.csv").iloc[-1]
    assert last["test_acc"] == acc and last["test_loss"] == pytest.approx(loss, rel=1e-5)
    before = snapshot(run_dir)  # (the run's lock in out/.grid notes each taker)
    again = subprocess.run([*torchrun, *run_args], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                           timeout=180)
    assert again.returncode != 0 and again.stderr.count("already exists: pass --resume") >= 2, again.stderr
    assert snapshot(run_dir) == before


# ---- gpus launcher -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gpus_launcher_workers_share_the_cells(tmp_path: Path) -> None:
    # Two "GPUs" on a CPU-only box: each worker sees CUDA_VISIBLE_DEVICES=<id> and trains on the CPU.
    # cnn_small cells of ~2 s each: long enough that both workers are up before the work runs out.
    path = write_grid(tmp_path / "g.yaml", base={"model": "cnn_small", "epochs": 3, "train_subset": 128},
                      grid={"method": ["sgd", "sam"], "seed": [0, 1, 2]})
    out = tmp_path / "out"
    proc = subprocess.run(bench_cmd("grid", str(path), "--out", str(out), "--launcher", "gpus", "--gpus", "0,1"),
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("worker on GPU") == 2
    cells = load_grid(path).cells(out=str(out))
    starts = [start_events(c.run_dir) for c in cells]
    assert [len(s) for s in starts] == [1] * len(cells)
    assert len({s[0]["pid"] for s in starts}) == 2
    assert sorted(pd.read_csv(out / "results.csv")["run_dir"]) == sorted(c.name for c in cells)


def test_launchers_refuse_to_start_without_their_machines(tmp_path: Path, monkeypatch, capsys) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"seed": [0]})
    out = tmp_path / "out"
    monkeypatch.setattr("shutil.which", lambda name: None)  # no sbatch: not a slurm login node
    assert main(["grid", str(path), "--out", str(out), "--launcher", "slurm"]) == 2
    assert "--cluster local" in capsys.readouterr().err
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["grid", str(path), "--out", str(out), "--launcher", "gpus"]) == 2
    assert "needs 1 GPU(s) per worker, found 0" in capsys.readouterr().err
    assert main(["grid", str(path), "--out", str(out), "--launcher", "gpus", "--gpus", "0,1,2",
                 "--nproc-per-node", "4"]) == 2
    assert not out.exists()
