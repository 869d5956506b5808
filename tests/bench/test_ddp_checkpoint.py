"""A 2-process (gloo, CPU) SAF run's checkpoint is one unit: killed between the per-rank shard writes and
the main checkpoint, or between the main checkpoint and the removal of old shards, it resumes to exactly
the uninterrupted run's metrics; shards that do not belong to checkpoint.pt are refused, never mixed.

The kill is forced by a crash hook (SAFBENCH_CRASH_AT, bench.faultpoints) at a named point on one rank,
never timed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.faultpoints import CRASH_ENV
from tests.bench.grid_util import REPO, cli_env, metrics

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bench"]
RUN = ["run", "--method", "saf", "--e-tilde", "1", "--e-start", "1", "--dataset", "synthetic", "--model", "mlp_tiny",
       "--epochs", "3", "--batch-size", "16", "--train-subset", "64", "--device", "cpu", "--num-workers", "0",
       "--no-progress"]


def _torchrun(out: Path, *extra: str, crash: str | None = None) -> subprocess.CompletedProcess:
    env = cli_env()
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.run([*TORCHRUN, *RUN, "--out", str(out), *extra], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("ddp-ref") / "out"
    done = _torchrun(out)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = _run_dir(out)
    # One shard per rank > 0, of the last epoch only, carrying checkpoint.pt's epoch and id.
    main = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert sorted(p.name for p in run_dir.glob("checkpoint-rank*")) == ["checkpoint-rank1-e3.pt"]
    shard = torch.load(run_dir / "checkpoint-rank1-e3.pt", weights_only=True)
    assert (shard["epoch"], shard["checkpoint_id"], shard["rank"]) == (main["epoch"], main["checkpoint_id"], 1) \
        == (3, main["checkpoint_id"], 1)
    return metrics(run_dir)


@pytest.mark.parametrize("crash, saved", [
    ("checkpoint-shards-e2@0", 1),  # every shard of epoch 2 written, checkpoint.pt still epoch 1
    ("checkpoint-main-e2@1", 2),  # checkpoint.pt of epoch 2 written, epoch 1's shard not yet removed
])
def test_killed_at_a_checkpoint_point_resumes_to_the_uninterrupted_metrics(
        crash: str, saved: int, reference: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = _torchrun(out, crash=crash)
    assert killed.returncode != 0
    run_dir = _run_dir(out)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == saved
    assert {p.name for p in run_dir.glob("checkpoint-rank1-*")} == {"checkpoint-rank1-e1.pt", "checkpoint-rank1-e2.pt"}
    resumed = _torchrun(out, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    pd.testing.assert_frame_equal(metrics(run_dir), reference)
    assert sorted(p.name for p in run_dir.glob("checkpoint-rank*")) == ["checkpoint-rank1-e3.pt"]


def test_a_shard_from_another_checkpoint_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _torchrun(out, crash="checkpoint-shards-e2@0").returncode != 0
    run_dir = _run_dir(out)
    # Epoch 2's shard put where epoch 1's belongs: a mixed checkpoint, as an unordered writer could leave.
    shutil.copy(run_dir / "checkpoint-rank1-e2.pt", run_dir / "checkpoint-rank1-e1.pt")
    refused = _torchrun(out, "--resume")
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.startswith("safbench: error:")]
    # One line per rank: rank 1 says why, rank 0 that rank 1 refused; neither trains on.
    assert len(lines) == 2, refused.stderr
    assert sum("does not belong to" in line and "refusing to mix" in line for line in lines) == 1
    assert sum("refused by rank 1" in line for line in lines) == 1
    assert not (run_dir / "summary.json").exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1  # nothing trained on
