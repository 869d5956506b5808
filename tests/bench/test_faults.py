"""Faults a user meets: damaged run files, unwritable checkpoints, concurrent resumes, signals.

Every fault is forced (a file damaged by hand, a writer patched to fail, a lock held by this test),
never timed. Each bad case must give one line on stderr naming the file and what to do, exit 2,
and change nothing in the run directory.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from bench.cells import CellLock, lock_holder, lock_path
from bench.cli import main
from bench.faultpoints import PAUSE_ENV
from tests.bench.grid_util import REPO, TINY, bench_cmd, cli_env, metrics, run_cli, snapshot, write_grid

RUN = {**TINY, "method": "sgd"}


def _write_config(path: Path, out: Path, **extra) -> Path:
    path.write_text(yaml.safe_dump({**RUN, "out": str(out), **extra}))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder with one finished 2-epoch run."""
    tmp = tmp_path_factory.mktemp("finished")
    out = tmp / "out"
    assert main(["run", "--config", str(_write_config(tmp / "c.yaml", out))]) == 0
    return out


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return out, run_dir, _write_config(tmp_path / "c.yaml", out)


def _zip_with_bad_pickle(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("checkpoint/data.pkl", os.urandom(200))


DAMAGE = {  # (file, how): a writer that damages it
    "checkpoint-empty": ("checkpoint.pt", lambda p: p.write_bytes(b"")),
    "checkpoint-truncated": ("checkpoint.pt", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    "checkpoint-random": ("checkpoint.pt", lambda p: p.write_bytes(os.urandom(4096))),
    "checkpoint-bad-pickle": ("checkpoint.pt", _zip_with_bad_pickle),
    "summary-list": ("summary.json", lambda p: p.write_text("[]")),
    "summary-truncated": ("summary.json", lambda p: p.write_text(p.read_text()[:40])),
    "config-corrupt": ("config.yaml", lambda p: p.write_text("method: [sgd\n  epochs: {{\n")),
    "config-not-mapping": ("config.yaml", lambda p: p.write_text("- 1\n- 2\n")),
    "metrics-random": ("metrics.csv", lambda p: p.write_bytes(b"\x00\xff\x13" * 50 + b"\n\"unclosed")),
    "metrics-empty": ("metrics.csv", lambda p: p.write_bytes(b"")),
}


def _one_line(err: str, path: Path) -> str:
    line = err.strip()
    assert "\n" not in line, err
    assert str(path) in line and "damaged" in line and "delete it" in line, line
    return line


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_resume_with_a_damaged_file_gives_one_line_and_changes_nothing(
        case: str, finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, run_dir, cfg = _copy(finished, tmp_path)
    name, damage = DAMAGE[case]
    if name != "summary.json":
        (run_dir / "summary.json").unlink()  # an interrupted run: resume must read its files
    damage(run_dir / name)
    before = snapshot(run_dir)
    capsys.readouterr()
    assert main(["run", "--config", str(cfg), "--resume"]) == 2
    _one_line(capsys.readouterr().err, run_dir / name)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("case", ["checkpoint-random", "checkpoint-truncated", "checkpoint-bad-pickle",
                                  "summary-list", "config-corrupt", "metrics-random"])
def test_grid_runs_the_other_cells_and_names_the_damaged_file(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = write_grid(tmp_path / "g.yaml", grid={"method": ["sgd", "sam"]})
    out = tmp_path / "out"
    assert main(["grid", str(grid), "--out", str(out)]) == 0
    sgd, sam = sorted((p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: "-sam-" in p.name)
    name, damage = DAMAGE[case]
    if name != "summary.json":
        (sgd / "summary.json").unlink()
    damage(sgd / name)
    shutil.rmtree(sam)  # a pending cell: it must still run
    before = snapshot(sgd)
    capsys.readouterr()
    assert main(["grid", str(grid), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert _one_line(captured.err, sgd / name)
    assert "1 finished, 1 damaged" in captured.out
    assert json.loads((sam / "summary.json").read_text())["status"] == "finished"
    if case == "checkpoint-bad-pickle":  # only loading it in full tells: the attempt log notes the try
        before.pop("attempts.jsonl")
        assert {k: v for k, v in snapshot(sgd).items() if k != "attempts.jsonl"} == before
        return  # and --dry-run, which reads no checkpoint in full, shows it as interrupted
    assert snapshot(sgd) == before
    assert main(["grid", str(grid), "--out", str(out), "--dry-run"]) == 0
    assert "damaged" in capsys.readouterr().out


def test_retry_failed_on_a_cell_with_an_unreadable_checkpoint_says_delete_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cell that failed on its checkpoint (as earlier versions recorded it) is retried and told what to do."""
    grid = write_grid(tmp_path / "g.yaml", grid={"method": ["sgd"]})
    out = tmp_path / "out"
    assert main(["grid", str(grid), "--out", str(out)]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "failed", "error": "EOFError: "}))
    (run_dir / "checkpoint.pt").write_bytes(b"")
    capsys.readouterr()
    assert main(["grid", str(grid), "--out", str(out), "--retry-failed"]) == 2
    line = _one_line(capsys.readouterr().err, run_dir / "checkpoint.pt")
    assert "empty" in line and "--retry-failed" in line
    assert (run_dir / "summary.failed-1.json").exists() and not (run_dir / "summary.json").exists()
    assert (run_dir / "checkpoint.pt").read_bytes() == b""
    # Once the user deletes the checkpoint, the cell runs from epoch 0 and finishes.
    (run_dir / "checkpoint.pt").unlink()
    assert main(["grid", str(grid), "--out", str(out)]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_deleted_files_are_rewritten_by_resume(finished: Path, tmp_path: Path) -> None:
    """What the one line tells the user to do works: delete the file, resume, and it is back."""
    out, run_dir, cfg = _copy(finished, tmp_path)
    metrics = (run_dir / "metrics.csv").read_text()
    for name in ("metrics.csv", "config.yaml", "summary.json"):
        (run_dir / name).unlink()
        assert main(["run", "--config", str(cfg), "--resume"]) == 0
        assert (run_dir / name).is_file()
    assert (run_dir / "metrics.csv").read_text() == metrics


# ---- checkpoints that cannot be written ------------------------------------------------------------
WRITE_ERRORS = {
    "full-disk": (lambda: OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    "full-disk-torch": (lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
                        "full disk"),
    "read-only": (lambda: OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
}


@pytest.mark.parametrize("case", sorted(WRITE_ERRORS))
def test_unwritable_checkpoint_gives_one_line_and_the_summary_counts_saved_epochs(
        case: str, finished: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The second epoch's checkpoint cannot be written: one line (path, cause, what to do), the failed
    summary claims the one saved epoch, nothing half-written is left, and --resume then finishes the run
    exactly as the uninterrupted one did."""
    make_error, cause = WRITE_ERRORS[case]
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04 half a checkpoint")  # what a full disk leaves in the temporary file
            raise make_error()
        return real_save(obj, f, *args, **kwargs)

    out = tmp_path / "out"
    cfg = _write_config(tmp_path / "c.yaml", out)
    monkeypatch.setattr(torch, "save", failing_save)
    capsys.readouterr()
    assert main(["run", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert "\n" not in err and str(run_dir / "checkpoint.pt") in err and cause in err and "--resume" in err, err
    assert not list(run_dir.glob(".*.tmp"))
    summary = json.loads((run_dir / "summary.json").read_text())
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert summary["status"] == "failed" and summary["epochs_completed"] == state["epoch"] == 1
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 1

    monkeypatch.setattr(torch, "save", real_save)
    assert main(["run", "--config", str(cfg), "--resume"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    (reference,) = [p for p in finished.iterdir() if p.is_dir() and not p.name.startswith(".")]
    pd.testing.assert_frame_equal(metrics(run_dir), metrics(reference))


# ---- the run's lock -------------------------------------------------------------------------------
def test_resume_refuses_a_run_another_process_holds(finished: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The lock is the grid's cell lock: whoever holds it (a grid, another resume), a resume exits 2."""
    out, run_dir, cfg = _copy(finished, tmp_path)
    (run_dir / "summary.json").unlink()
    leftover = run_dir / ".checkpoint.pt.x1y2.tmp"
    leftover.write_bytes(b"half")
    before = snapshot(run_dir)
    with CellLock(lock_path(run_dir)) as other:
        assert other.acquire(wait_s=0)
        capsys.readouterr()
        assert main(["run", "--config", str(cfg), "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(run_dir) in err and "in use by another process" in err, err
        assert f"{os.getpid()}" in err  # the holder's note: host and pid
        assert snapshot(run_dir) == before  # the holder's temporary file is not touched
    # Free again: the resume takes the lock, removes the leftover and finishes.
    assert main(["run", "--config", str(cfg), "--resume"]) == 0
    assert not leftover.exists() and (run_dir / "summary.json").exists()
    assert lock_holder(lock_path(run_dir)) is None  # released at the end


def test_two_resumes_of_one_run_never_train_at_once(finished: Path, tmp_path: Path) -> None:
    """A second process resuming while the first trains (held at a barrier file this test controls)."""
    out, run_dir, cfg = _copy(finished, tmp_path)
    (run_dir / "summary.json").unlink()
    (run_dir / "checkpoint.pt").unlink()
    (run_dir / "metrics.csv").unlink()
    barrier, entered = tmp_path / "go", tmp_path / "entered"
    env = {**cli_env(), PAUSE_ENV: f"epoch-0:{entered}:{barrier}"}
    first = subprocess.Popen(bench_cmd("run", "--config", str(cfg), "--resume"), cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not entered.exists():  # the first process is inside epoch 0, holding the lock
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        second = run_cli("run", "--config", str(cfg), "--resume")
        assert second.returncode == 2 and "in use by another process" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        barrier.write_text("")
        out_text, err_text = first.communicate(timeout=120)
    assert first.returncode == 0, err_text
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


# ---- signals ----------------------------------------------------------------------------------------
def test_sigterm_gives_one_line_exit_143_and_a_resumable_checkpoint(finished: Path, tmp_path: Path) -> None:
    """SIGTERM lands while the run is held at the start of epoch 1 (a barrier this test owns)."""
    out = tmp_path / "out"
    cfg = _write_config(tmp_path / "c.yaml", out)
    entered = tmp_path / "entered"
    env = {**cli_env(), PAUSE_ENV: f"epoch-1:{entered}:{tmp_path / 'never'}"}
    proc = subprocess.Popen(bench_cmd("run", "--config", str(cfg)), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not entered.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip() == "safbench: terminated (SIGTERM); the last checkpoint is kept: continue with --resume"
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (run_dir / "summary.json").exists() and not list(run_dir.glob(".*.tmp"))
    assert main(["run", "--config", str(cfg), "--resume"]) == 0
    (reference,) = [p for p in finished.iterdir() if p.is_dir() and not p.name.startswith(".")]
    pd.testing.assert_frame_equal(metrics(run_dir), metrics(reference))


def test_an_error_line_reaches_stderr_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranks of a torchrun share one stderr pipe; a line written in two pieces (print's text, then its
    newline) can be spliced with another rank's. One write of under PIPE_BUF bytes is atomic."""
    from bench.cli import say

    writes: list[str] = []

    class Recorder:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())
    say("safbench: error: one line")
    assert writes == ["safbench: error: one line\n"]
