"""Helpers shared by the grid tests: tiny grid files, CLI subprocesses, folder snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]
# A cell that trains in well under a second on the CPU.
TINY: dict[str, Any] = {"dataset": "synthetic", "model": "mlp_tiny", "epochs": 2, "batch_size": 16,
                        "train_subset": 64, "eval_batch_size": 256, "device": "cpu", "num_workers": 0,
                        "progress": False}
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]  # not timings


def write_grid(path: Path, base: dict | None = None, grid: Any = None, per_method: dict | None = None,
               **top: Any) -> Path:
    data: dict[str, Any] = {"base": {**TINY, **(base or {})}}
    if grid is not None:
        data["grid"] = grid
    if per_method is not None:
        data["per_method"] = per_method
    data.update(top)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench", *args]


def cli_env() -> dict[str, str]:
    # One thread per process: two grid processes on a 2-core box, and equal numerics everywhere.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(bench_cmd(*args), cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and mtime: equal snapshots mean nothing was written."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def summaries(out: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))}


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")[METRIC_COLUMNS]


def attempts(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def start_events(run_dir: Path) -> list[dict[str, Any]]:
    """The attempts.jsonl events of the run's starts (a resumed attempt has resume: true)."""
    return [a for a in attempts(run_dir) if a["event"] == "start"]
