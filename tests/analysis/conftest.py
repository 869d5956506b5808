"""Stored records written directly, for the report's tests: what `safbench run` and the flatness commands leave
in a run directory (summary.json, metrics.csv, hessian.json, hessian_epochs.csv, landscape and density
npz files), without training anything.

A summary is consistent with its metrics.csv the way bench.run writes it (final and best accuracy, median
post-warm-up images/s, summed epoch times), and its config keys come from a real RunConfig, so a test of
a reader sees the writer's fields. tests/analysis/test_report.py keeps one end-to-end test that trains.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.measure.landscape import save_landscape
from bench.config import RunConfig
from bench.records import (
    HESSIAN_DENSITY,
    LANDSCAPE_1D,
    LANDSCAPE_2D,
    HessianRecord,
    MetricsRow,
    Provenance,
    Summary,
    landscape_line,
)
from bench.rundir import config_summary, write_hessian_epoch, write_metrics, write_summary
from bench.rundir import write_hessian as write_hessian_record
from bench.tuning import val_readout

DEVICE_NAME = "cpu: Test CPU (2 cores, 1 threads)"
PROVENANCE: Provenance = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "python_version": "3.11.7",
              "torch_version": "2.0.0+test", "torchvision_version": "0.15.0+test", "timm_version": "0.9.0",
              "device_name": DEVICE_NAME, "hostname": "test-host"}


@dataclass
class Curve:
    """A run's per-epoch numbers, as metrics.csv holds them."""

    test_acc: Sequence[float]
    epoch_time_s: Sequence[float]
    images_per_s: Sequence[float]
    sharpness: Sequence[float] | None = None


def curve(rng: np.random.Generator, epochs: int, *, speed: float = 1000.0) -> Curve:
    """A plausible rising curve: accuracy climbing towards ~0.9, epoch times near 1 s at `speed` img/s."""
    acc = np.clip(0.5 + 0.4 * (1 - np.exp(-np.arange(1, epochs + 1))) + rng.normal(0, 0.02, epochs), 0, 1)
    times = 1.0 + rng.uniform(0, 0.2, epochs)
    return Curve(acc.round(4).tolist(), times.tolist(), (speed * rng.uniform(0.9, 1.1, epochs)).tolist())


@dataclass
class StoredRun:
    config: RunConfig
    path: Path
    summary: dict[str, Any]
    curve: Curve
    commands: list[str] = field(default_factory=list)  # the flatness commands recorded in its files


def write_run(out: Path, curve_: Curve, *, status: str = "finished", command: str | None = None,
              **values: Any) -> StoredRun:
    """One run directory under `out` as `safbench run` leaves it: summary.json and metrics.csv, written by
    bench.rundir's writers, the summary's config part by bench.rundir.config_summary as the run does."""
    config = RunConfig.from_dict({"model": "mlp_tiny", "device": "cpu", "out": str(out), **values})
    resolved = config.resolved("cpu")
    path = out / config.run_name()
    metrics: list[MetricsRow] = [
        {"epoch": e, "train_loss": 0.5, "train_acc": acc, "test_loss": 0.6, "test_acc": acc, "lr": resolved.lr,
         "epoch_time_s": t, "images_per_s": speed, "peak_mem_bytes": 0}
        for e, (acc, t, speed) in enumerate(zip(curve_.test_acc, curve_.epoch_time_s, curve_.images_per_s,
                                                 strict=True))]
    if curve_.sharpness is not None:
        for row, sharpness in zip(metrics, curve_.sharpness, strict=True):
            row["sharpness"] = sharpness
    speeds = list(curve_.images_per_s[1:]) or list(curve_.images_per_s)
    command = command or f"safbench run --method {config.method} --dataset {config.dataset} --seed {config.seed}"
    summary: Summary = {
        **config_summary(resolved, config.config_hash(), path),
        "epochs_completed": len(metrics), "status": status, "error": None,
        "final_test_acc": curve_.test_acc[-1], "best_test_acc": max(curve_.test_acc),
        "final_train_loss": 0.5, "final_test_loss": 0.6, "final_train_acc": curve_.test_acc[-1],
        "final_sharpness": curve_.sharpness[-1] if curve_.sharpness is not None else None,
        "final_adaptive_sharpness": None,
        **val_readout(metrics),
        "images_per_s": statistics.median(speeds), "images_per_s_warmup": curve_.images_per_s[0],
        "train_time_s": sum(curve_.epoch_time_s), "wall_s": sum(curve_.epoch_time_s) + 0.5,
        "peak_mem_bytes": 0, "label_noise_flipped": 0, "world_size": 1, "precision": resolved.precision,
        "num_samples": 64, "num_params": 1000, "extras": {}, "command": command, **PROVENANCE,
    }
    path.mkdir(parents=True)
    write_metrics(path, metrics)
    write_summary(path, summary)
    return StoredRun(config, path, dict(summary), curve_)


def write_hessian(run: StoredRun, lambda_max: float, trace: float, *, epoch: int | None = None,
                  at_epochs: dict[int, tuple[float, float]] | None = None) -> HessianRecord:
    """hessian.json of the model after `epoch` epochs (default: the run's last) and, with `at_epochs`
    (0-based epoch -> (λ_max, trace)), hessian_epochs.csv."""
    command = f"safbench hessian {run.path}"
    measured: HessianRecord = {
        "lambda_max": lambda_max, "trace": trace, "trace_stderr": 0.1, "top_eigenvalues": [lambda_max, lambda_max / 2],
        "samples": 32, "epoch": run.summary["epochs_completed"] if epoch is None else epoch, "command": command,
        **PROVENANCE}
    write_hessian_record(run.path, measured)
    for e, (lm, tr) in sorted((at_epochs or {}).items()):
        write_hessian_epoch(run.path, {"epoch": e, "lambda_max": lm, "trace": tr})
    run.commands.append(command)
    return measured


def _meta(run: StoredRun, kind: str, **more: Any) -> dict[str, Any]:
    command = f"safbench landscape {run.path} --kind {kind}"
    run.commands.append(command)
    return {"run_dir": run.path.name, "epoch": run.summary["epochs_completed"], "kind": kind,
            "method": run.config.method, "command": command, **PROVENANCE, **more}


def write_landscapes(run: StoredRun, depth: float, resolution: int = 7) -> None:
    """landscape_1d.npz and landscape_2d.npz: a bowl of curvature `depth` around the run's weights."""
    alphas = np.linspace(-1.0, 1.0, resolution)
    save_landscape(run.path / LANDSCAPE_1D, {"alphas": alphas, "loss": 0.2 + depth * alphas**2,
                                             "accuracy": np.full(resolution, 0.9)}, _meta(run, "1d"))
    gx, gy = np.meshgrid(alphas, alphas)
    save_landscape(run.path / LANDSCAPE_2D, {"xs": alphas, "ys": alphas, "loss": 0.2 + depth * (gx**2 + gy**2),
                                             "accuracy": np.full((resolution, resolution), 0.9)}, _meta(run, "2d"))


def write_line(run: StoredRun, other: StoredRun, resolution: int = 7) -> None:
    """The interpolation line from `run`'s weights to `other`'s."""
    alphas = np.linspace(-0.25, 1.25, resolution)
    save_landscape(landscape_line(run.path, other.path),
                   {"alphas": alphas, "loss": 0.3 + (alphas - 0.5) ** 2, "accuracy": np.full(resolution, 0.9)},
                   _meta(run, "line", to_run_dir=other.path.name, to_method=other.config.method))


def write_density(run: StoredRun, nodes: Sequence[float], weights: Sequence[float]) -> None:
    """hessian_density.npz: a stochastic-Lanczos quadrature (nodes, weights summing to 1)."""
    grid = np.linspace(min(nodes) - 1, max(nodes) + 1, 50)
    save_landscape(run.path / HESSIAN_DENSITY,
                   {"nodes": np.asarray(nodes), "weights": np.asarray(weights), "grid": grid,
                    "density": np.ones_like(grid)},
                   _meta(run, "hessian_density", n_iter=len(nodes), n_v=1, samples=32))


@dataclass
class StoredResults:
    """A results folder of written records: its path, every run, and the commands recorded in them."""

    results: Path
    runs: list[StoredRun]

    @property
    def commands(self) -> list[str]:
        return [r.summary["command"] for r in self.runs]


SAF = {"e_tilde": 1, "e_start": 1}  # SAF's trajectory loss from the second epoch on


def write_results_folder(results: Path) -> StoredResults:
    """What test_report's report reads: three methods x two seeds on synthetic (with Hessians, landscapes,
    densities and a line on seed 0), a one-epoch SGD run in a second folder, CIFAR-10 and Fashion-MNIST runs."""
    rng = np.random.default_rng(0)
    runs = []

    def add(folder: str, method: str, dataset: str, seed: int, epochs: int, speed: float, **more: Any) -> StoredRun:
        extra = SAF if method == "saf" else {}
        out = results / folder
        command = f"safbench run --method {method} --dataset {dataset} --seed {seed} --epochs {epochs} --out {out}"
        run = write_run(out, curve(rng, epochs, speed=speed), command=command, method=method, dataset=dataset,
                        seed=seed, epochs=epochs, **extra, **more)
        runs.append(run)
        return run

    speeds = {"sgd": 1000.0, "sam": 520.0, "saf": 960.0}
    synthetic = {}
    for method in ("sgd", "sam", "saf"):
        for seed in (0, 1):
            run = synthetic[method, seed] = add("synthetic", method, "synthetic", seed, 2, speeds[method],
                                               batch_size=32, train_subset=64)
            lam = {"sgd": 9.0, "sam": 4.0, "saf": 5.0}[method] + seed
            write_hessian(run, lam, 30 * lam + seed, at_epochs={0: (lam / 2, 15 * lam)})
    add("synthetic-short", "sgd", "synthetic", 0, 1, 1000.0, batch_size=32, train_subset=64)
    for method in ("sgd", "saf"):
        add("cifar10", method, "cifar10", 0, 2, speeds[method], batch_size=16, train_subset=32)
    add("fashionmnist", "sgd", "fashionmnist", 0, 1, 1000.0, batch_size=16, train_subset=32)
    for method, depth in (("sgd", 4.0), ("sam", 1.0), ("saf", 1.5)):
        run = synthetic[method, 0]
        write_landscapes(run, depth)
        write_density(run, [-0.5, 0.2, 1.0, depth * 2], [0.1, 0.5, 0.3, 0.1])
    write_line(synthetic["sgd", 0], synthetic["saf", 0])
    return StoredResults(results, runs)


@pytest.fixture(scope="module")
def stored_results(tmp_path_factory: pytest.TempPathFactory) -> StoredResults:
    """A results folder of written records (no training), one per test module."""
    return write_results_folder(tmp_path_factory.mktemp("stored") / "results")
