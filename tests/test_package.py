"""A wheel, installed outside the checkout, carries the shipped grids and the published numbers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_runs_grid_dry_run_and_report(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("optimizers", "bench", "analysis", "grids"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "results" / "reference", src / "results" / "reference")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, text=True)
    target = tmp_path / "site"
    wheel = next(wheels.glob("safbench-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    # Outside the checkout: only the installed copy (first on the path) and the venv's dependencies.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import bench, analysis; print(bench.__file__, analysis.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert str(REPO) not in where and str(target) in where

    def safbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench", *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True)

    dry = safbench("grid", "quick", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "pending" in dry.stdout and "fashionmnist" in dry.stdout

    run_out = elsewhere / "runs"
    assert safbench("run", "--method", "sgd", "--dataset", "synthetic", "--model", "mlp_tiny", "--epochs", "1",
                    "--batch-size", "16", "--train-subset", "64", "--device", "cpu", "--num-workers", "0",
                    "--out", str(run_out)).returncode == 0
    report = safbench("report", "--results", str(run_out), "--no-figures")
    assert report.returncode == 0, report.stderr
    text = (run_out / "REPORT.md").read_text()
    # The published tables were read from the installed package: the pointer names them and the file.
    assert "paper_results.csv" in text and "Table 1 (ImageNet)" in text and "Table 3" in text
