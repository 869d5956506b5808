"""Cost you can see: accuracy-against-cost curves and the time-to-target table, from metrics.csv files
written directly by the test (no training), checked against numbers worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.report.cost import benchmark_pricing, cost_targets, format_time_to_target, time_to_target
from analysis.report.plots import plot_cost
from analysis.report.run_files import epoch_curves

# (method, seed) -> per-epoch (test_acc, epoch_time_s); SGD's final mean accuracy is (0.80 + 0.82) / 2 = 0.81.
CURVES = {
    ("sgd", 0): [(0.50, 10.0), (0.70, 10.0), (0.80, 10.0)],
    ("sgd", 1): [(0.52, 12.0), (0.72, 12.0), (0.82, 12.0)],
    # Mean curve 0.60, 0.81, 0.83: reaches 0.81 after its second epoch, at (20 + 22) / 2 + (20 + 22) / 2 = 42 s.
    ("sam", 0): [(0.60, 20.0), (0.80, 20.0), (0.82, 20.0)],
    ("sam", 1): [(0.60, 22.0), (0.82, 22.0), (0.84, 22.0)],
    # Mean curve 0.55, 0.70, 0.805: never reaches 0.81.
    ("saf", 0): [(0.55, 10.5), (0.70, 10.5), (0.80, 10.5)],
    ("saf", 1): [(0.55, 10.5), (0.70, 10.5), (0.81, 10.5)],
}


def _rows(tmp: Path, curves: dict = CURVES, setting: str = "") -> pd.DataFrame:
    rows = []
    for (method, seed), epochs in curves.items():
        run = tmp / f"{method}-s{seed}"
        run.mkdir(parents=True)
        pd.DataFrame({"epoch": range(len(epochs)), "test_acc": [a for a, _ in epochs],
                      "epoch_time_s": [t for _, t in epochs], "images_per_s": 100.0}).to_csv(
            run / "metrics.csv", index=False)
        rows.append({"dataset": "d", "model_key": "m", "method_label": method, "setting": setting, "seed": seed,
                     "status": "finished", "run_path": str(run), "epochs_completed": len(epochs)})
    return pd.DataFrame(rows)


def test_time_to_target_by_hand(tmp_path: Path) -> None:
    table = time_to_target(epoch_curves(_rows(tmp_path))).set_index("method_label")
    assert list(table.index) == ["sgd", "sam", "saf"]  # the report's method order
    assert table["target_acc"].tolist() == pytest.approx([0.81] * 3)
    assert table.loc["sgd", "reached_epoch"] == 2 and table.loc["sgd", "seconds"] == pytest.approx(33.0)
    assert table.loc["sam", "reached_epoch"] == 1 and table.loc["sam", "seconds"] == pytest.approx(42.0)
    assert table.loc["sam", "time_ratio"] == pytest.approx(42.0 / 33.0)
    assert math.isnan(table.loc["saf", "reached_epoch"]) and math.isnan(table.loc["saf", "seconds"])
    assert table.loc["saf", "final_acc"] == pytest.approx(0.805) and table.loc["saf", "seeds"] == 2
    shown = format_time_to_target(table.reset_index()).set_index("Method")
    assert shown.loc["sam", "Reached after epoch"] == "2 of 3"
    assert shown.loc["sam", "Time to it (s)"] == "42.0" and shown.loc["sam", "× base's time"] == "1.27"
    assert shown.loc["saf", "Reached after epoch"] == "never" and shown.loc["saf", "Time to it (s)"] == "—"
    assert shown.loc["sgd", "Target: base's final acc (%)"] == "81.00 (sgd)"


def test_time_is_priced_by_the_step_benchmark_with_sgd_steps_before_the_method_starts(tmp_path: Path) -> None:
    """10 steps per epoch, SGD's benchmark step 100 ms: an SGD epoch costs 1 s, a SAM epoch 2 s; SAF costs
    1 s until its e_start = 1, then 1.05 s. Worked by hand from the curves below."""
    curves = dict(CURVES)
    curves[("saf", 1)] = [(0.55, 10.5), (0.70, 10.5), (0.83, 10.5)]  # mean 0.815 at epoch 2: reaches 0.81
    rows = _rows(tmp_path, curves).assign(model="m", batch_size=10, num_samples=100, world_size=1,
                                          hp_e_start=1.0, hp_e_tilde=1.0)
    rows["method"] = rows["method_label"]
    steps = pd.DataFrame([
        {"model": "m", "shape": "d", "batch_size": 10, "method": m, "file": "steps-cpu-1.csv", "measured_at": "1",
         "step_ms_median": 100.0 * r, "time_ratio_median": r} for m, r in (("sgd", 1.0), ("sam", 2.0), ("saf", 1.05))])
    table = time_to_target(epoch_curves(rows), benchmark_pricing(rows, steps)).set_index("method_label")
    assert table.loc["sgd", "seconds"] == pytest.approx(3.0) and table.loc["sam", "seconds"] == pytest.approx(4.0)
    assert table.loc["saf", "seconds"] == pytest.approx(1.0 + 1.05 + 1.05)
    assert table.loc["saf", "time_ratio"] == pytest.approx(3.1 / 3.0)
    assert table.loc["sam", "measured_seconds"] == pytest.approx(42.0)  # the runs' own time is kept beside it
    assert set(table["time_source"]) == {"step benchmark (steps-cpu-1.csv)"}
    shown = format_time_to_target(table.reset_index()).set_index("Method")
    assert shown.loc["sam", "Time from"] == "step benchmark (steps-cpu-1.csv)"


def test_a_cell_off_the_benchmarked_step_work_is_not_priced_by_the_benchmark(tmp_path: Path) -> None:
    """The benchmark timed LookSAM at its default k = 5 (ratio 1.2); at k = 1 LookSAM is SAM, whose step costs
    twice SGD's, so pricing it at 1.2 would understate its time. k is declared `sets_cost`; alpha is not."""
    curves = {k: v for k, v in CURVES.items() if k[0] == "sgd"}
    curves |= {("looksam", s): v for (m, s), v in CURVES.items() if m == "sam"}
    rows = _rows(tmp_path, curves).assign(model="m", batch_size=10, num_samples=100, world_size=1, hp_k=5.0,
                                          hp_alpha=0.7)
    rows["method"] = rows["method_label"]
    steps = pd.DataFrame([
        {"model": "m", "shape": "d", "batch_size": 10, "method": m, "file": "steps-cpu-1.csv", "measured_at": "1",
         "step_ms_median": 100.0 * r, "time_ratio_median": r} for m, r in (("sgd", 1.0), ("looksam", 1.2))])
    at_default = time_to_target(epoch_curves(rows), benchmark_pricing(rows, steps)).set_index("method_label")
    assert at_default.loc["looksam", "seconds"] == pytest.approx(2.4)  # 2 epochs x 1 s x 1.2
    other_alpha = rows.assign(hp_alpha=0.1)
    assert ("d", "m", "looksam", "") in benchmark_pricing(other_alpha, steps)
    k1 = rows.copy()
    k1.loc[k1["method"] == "looksam", "hp_k"] = 1.0
    pricing = benchmark_pricing(k1, steps)
    assert ("d", "m", "looksam", "") not in pricing and ("d", "m", "sgd", "") in pricing
    table = time_to_target(epoch_curves(k1), pricing).set_index("method_label")
    assert table.loc["looksam", "time_source"] == "runs' epoch_time_s"
    assert table.loc["looksam", "seconds"] == pytest.approx(42.0) and math.isnan(table.loc["looksam", "time_ratio"])


def test_best_accuracy_is_the_mean_of_the_per_seed_bests(tmp_path: Path) -> None:
    curves = {("sgd", 0): [(0.8, 1.0), (0.6, 1.0)], ("sgd", 1): [(0.6, 1.0), (0.8, 1.0)]}
    table = time_to_target(epoch_curves(_rows(tmp_path, curves)))
    assert table["best_acc"].iloc[0] == pytest.approx(0.8)  # the mean curve peaks at 0.7
    assert table["time_source"].iloc[0] == "runs' epoch_time_s"


def test_no_base_run_gives_no_table(tmp_path: Path) -> None:
    without_sgd = {k: v for k, v in CURVES.items() if k[0] != "sgd"}
    assert time_to_target(epoch_curves(_rows(tmp_path, without_sgd))).empty
    assert time_to_target(pd.DataFrame()).empty


def test_a_method_setting_finds_the_base_of_its_general_setting(tmp_path: Path) -> None:
    rows = _rows(tmp_path, setting="epochs=3")
    rows.loc[rows["method_label"] == "sam", "setting"] = "epochs=3, rho=0.1"
    table = time_to_target(epoch_curves(rows)).set_index("method_label")
    assert table.loc["sam", "target_acc"] == pytest.approx(0.81) and table.loc["sam", "reached_epoch"] == 1


def test_cost_figure_plots_time_and_epochs_with_the_target(tmp_path: Path) -> None:
    curves = epoch_curves(_rows(tmp_path))
    targets = cost_targets(curves, pd.DataFrame())
    assert targets == {"m": pytest.approx(0.81)}
    fig = plot_cost(curves, pd.DataFrame(), "t", targets)
    left, right = fig.axes[0], fig.axes[1]
    sam = [ln for ln in left.get_lines() if ln.get_label() == "sam"][0]
    assert np.allclose(sam.get_xdata(), [21.0, 42.0, 63.0]) and np.allclose(sam.get_ydata(), [60.0, 81.0, 83.0])
    sam_epochs = [ln for ln in right.get_lines() if ln.get_label() == "sam"][0]
    assert np.allclose(sam_epochs.get_xdata(), [1, 2, 3])
    dashed = [ln for ln in left.get_lines() if ln.get_label() == "base's final accuracy"][0]
    assert np.allclose(dashed.get_ydata(), 81.0)
    assert left.get_ylim() == right.get_ylim()
