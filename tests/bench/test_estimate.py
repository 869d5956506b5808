"""The estimate's arithmetic on injected unit times (no timing is asserted), and its command on a tiny grid."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import estimate_probe
from bench.config import RunConfig
from bench.estimate import HESSIAN_HVPS, CellEstimate, UnitTimes, Workload, estimate_cell, totals, wall_clock
from tests.cli_util import run_main


def _config(**kw) -> RunConfig:
    return RunConfig.from_dict({"dataset": "synthetic", "model": "cnn_small", "device": "cpu", **kw})


def test_workload_counts_steps_evaluations_and_extras() -> None:
    cfg = _config(method="saf", epochs=10, batch_size=32, eval_batch_size=100, train_subset=1000, e_start=4,
                  e_tilde=2, sharpness=True, sharpness_samples=100, hessian=True, hessian_epochs=[2, 5])
    work = Workload.of(cfg, train_samples=5000, test_samples=1001, world_size=2)
    assert work.steps_per_epoch == 1000 // 64  # drop_last over both ranks
    assert work.inactive_epochs == 4  # SAF's loss from max(e_start, e_tilde)
    assert work.eval_batches == math.ceil(501 / 100)  # each rank evaluates its share
    with_val = Workload.of(_config(val_size=250, eval_batch_size=100), train_samples=5000, test_samples=1000)
    assert with_val.eval_batches == 10 + 3  # the validation set too, after every epoch
    assert work.sharpness_batches == math.ceil(100 / 32)
    assert work.hessians == 1 + 2  # the final model and two chosen epochs
    # priced by the installed hook's own count: 2 top-1 courses + the final top-3 with a 50-probe trace
    from analysis.measure.eigen import default_ncv

    assert work.hessian_hvps == 2 * (default_ncv(1, 10**9) + 6) + default_ncv(3, 10**9) + 6 + 50


def test_cell_estimate_from_injected_unit_times() -> None:
    work = Workload(epochs=10, steps_per_epoch=7, inactive_epochs=3, eval_batches=5, sharpness_batches=2,
                    hessians=2)
    unit = UnitTimes(step_s=2.0, step_inactive_s=1.0, load_s=0.5, eval_batch_s=0.3, sharpness_batch_s=0.7,
                     hvp_s=0.01)
    est = estimate_cell(work, unit, done_fraction=0.25)
    assert est.train_s == pytest.approx(3 * 7 * 1.5 + 7 * 7 * 2.5)  # resident loading adds to each step
    assert est.eval_s == pytest.approx(10 * 5 * 0.3)
    assert est.sharpness_s == pytest.approx(10 * 2 * 0.7)
    assert est.hessian_s == pytest.approx(2 * HESSIAN_HVPS * 0.01)
    assert est.done_s == pytest.approx(0.25 * est.total_s) and est.left_s == pytest.approx(0.75 * est.total_s)
    streamed = estimate_cell(work, UnitTimes(step_s=2.0, load_s=3.0, load_overlaps=True))
    assert streamed.train_s == pytest.approx(10 * 7 * 3.0)  # workers overlap: the slower of the two
    no_inactive = estimate_cell(work, UnitTimes(step_s=2.0))
    assert no_inactive.train_s == pytest.approx(10 * 7 * 2.0)


def test_totals_and_wall_clock_follow_the_gpus_launcher() -> None:
    cells = [CellEstimate(5, 0, 0, 0, done_fraction=1.0), CellEstimate(4, 0, 0, 0), CellEstimate(3, 0, 0, 0),
             CellEstimate(2, 1, 0, 0, done_fraction=0.5)]
    t = totals(cells)
    assert (t.total_s, t.done_s, t.left_s) == (15, 6.5, 8.5)
    # two workers take cells in order: [4], [3] -> then 1.5 goes to the one free first (at 3)
    assert wall_clock([c.left_s for c in cells], 2) == pytest.approx(4.5)
    assert wall_clock([4, 3, 1.5], 1) == pytest.approx(8.5)
    assert wall_clock([4, 3, 1.5], 8) == pytest.approx(4)


def test_probe_prices_each_cell_with_its_combination_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's measured unit times, replaced by injected ones, reach each cell scaled to its batch."""
    def fake_time_group(self, group) -> None:
        for config in group["pending"]:
            group["methods"][config.method] = ({"sgd": 0.01, "sam": 0.02}[config.method], None)
        group["pending"] = []

    monkeypatch.setattr(estimate_probe.Probe, "_time_group", fake_time_group)
    monkeypatch.setattr(estimate_probe, "_fit_batch", lambda work, target, clock, start=2: (4, 0.01))
    configs = [_config(method=m, epochs=3, batch_size=16).resolved("cpu") for m in ("sgd", "sam")]
    pairs, probe = estimate_probe.probe_cells(configs, estimate_probe.torch.device("cpu"))
    (w_sgd, u_sgd), (w_sam, u_sam) = pairs
    assert w_sgd.steps_per_epoch == 512 // 16  # synthetic's 512 training samples, found by loading it
    assert u_sgd.step_s == pytest.approx(0.01 * 16 / 4) and u_sam.step_s == pytest.approx(0.02 * 16 / 4)
    assert len(probe._groups) == 1  # one model, timed once for both methods


def test_grid_dry_run_estimate_prints_cells_totals_and_assumptions(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: synthetic, model: mlp_tiny, epochs: 2, batch_size: 32, device: cpu}\n"
                    "grid: {method: [sgd, saf], seed: [0, 1]}\n")
    res = run_main("grid", str(grid), "--out", str(tmp_path / "runs"), "--dry-run", "--estimate",
                   "--launcher", "slurm", "--array-parallelism", "2")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert sum("pending" in line for line in lines) == 4
    assert any(line.startswith("total ") and "done 0.0 s" in line for line in lines)
    assert any("wall-clock left over 2 array tasks" in line for line in lines)
    assert any("steps per epoch" in line and "synthetic: 16" in line for line in lines)
    assert any("not a promise" in line for line in lines)
    assert not (tmp_path / "runs").exists()


def test_estimate_needs_dry_run(tmp_path: Path) -> None:
    res = run_main("grid", "quick", "--estimate", "--out", str(tmp_path))
    assert res.returncode == 2 and "add --dry-run" in res.stderr


def test_run_estimate_prices_one_config_and_trains_nothing(tmp_path: Path) -> None:
    res = run_main("run", "--dataset", "synthetic", "--model", "mlp_tiny", "--method", "saf", "--epochs", "10",
                   "--e-start", "5", "--batch-size", "32", "--device", "cpu", "--sharpness", "--estimate",
                   "--out", str(tmp_path / "runs"))
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert first.startswith("synthetic-mlp_tiny-saf-s0-") and "sharpness" in first and "0% done" in first
    assert "timed at batch 32" in res.stdout
    assert not (tmp_path / "runs").exists()


def test_done_fraction_reads_the_epochs_in_the_run_directory(tmp_path: Path) -> None:
    from bench.estimate_cli import done_fraction

    run_dir = _config(epochs=4, out=str(tmp_path)).run_dir()
    assert done_fraction(run_dir, 4) == 0.0  # pending: nothing there
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("epoch,train_loss\n0,1.0\n1,0.9\n")
    assert done_fraction(run_dir, 4) == 0.5
    (run_dir / "summary.json").write_text('{"status": "finished"}')
    assert done_fraction(run_dir, 4) == 1.0
