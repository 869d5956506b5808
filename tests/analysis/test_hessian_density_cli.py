"""`safbench hessian RUN_DIR --density` on a tiny real run, checked against power iteration and by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.flatness import density_summary
from analysis.measure.landscape import load_landscape
from analysis.report import plots
from bench.cli import main
from bench.config import RunConfig
from bench.records import HESSIAN_DENSITY
from bench.run import run

TINY = {"model": "mlp_tiny", "batch_size": 32, "train_subset": 64, "device": "cpu", "num_workers": 0,
        "progress": False, "dataset": "synthetic", "epochs": 1}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("density") / "g"
    run(RunConfig.from_dict({**TINY, "method": "sgd", "out": str(out)}), command="safbench run ...")
    (found,) = [p for p in out.iterdir() if (p / "summary.json").exists()]  # beside it: the run's lock
    return found


def test_density_is_stored_with_provenance_and_agrees_with_power_iteration(run_dir: Path) -> None:
    argv = ["hessian", str(run_dir), "--samples", "32", "--k", "1", "--trace-samples", "2", "--device", "cpu",
            "--density", "--density-iter", "30", "--density-runs", "2"]
    assert main(argv) == 0
    arrays, meta = load_landscape(run_dir / HESSIAN_DENSITY)
    assert meta["command"] == "safbench " + " ".join(argv)
    assert meta["git_commit"] and meta["torch_version"] and meta["device_name"].startswith("cpu")
    assert (meta["n_iter"], meta["n_v"], meta["samples"], meta["epoch"]) == (30, 2, 32, 1)
    nodes, weights = arrays["nodes"], arrays["weights"]
    assert nodes.shape == weights.shape == (60,)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    # The extreme Ritz value converges to λ_max, measured independently by power iteration (hessian.json).
    lam = json.loads((run_dir / "hessian.json").read_text())["lambda_max"]
    assert meta["largest"] == pytest.approx(nodes.max()) == pytest.approx(lam, rel=2e-2)
    assert meta["smallest"] == pytest.approx(nodes.min())
    assert meta["negative_mass"] == pytest.approx(weights[nodes < 0].sum())


def test_density_summary_by_hand() -> None:
    got = density_summary([-0.5, 0.0, 2.0, 7.0], [0.1, 0.6, 0.2, 0.1])
    assert got == {"largest": 7.0, "smallest": -0.5, "negative_mass": pytest.approx(0.1)}


def test_bad_density_settings_exit_2(run_dir: Path) -> None:
    assert main(["hessian", str(run_dir), "--density", "--density-iter", "0", "--device", "cpu"]) == 2


def test_density_figure_and_table_from_stored_arrays() -> None:
    frame = pd.DataFrame([
        {"method_label": "sgd", "setting": "", "seed": 0, "nodes": np.array([-1.0, 0.0, 10.0]),
         "weights": np.array([0.2, 0.7, 0.1])},
        {"method_label": "sgd", "setting": "", "seed": 1, "nodes": np.array([-3.0, 0.0, 14.0]),
         "weights": np.array([0.1, 0.8, 0.1])},
        {"method_label": "saf", "setting": "", "seed": 0, "nodes": np.array([0.0, 4.0]),
         "weights": np.array([0.9, 0.1])}])
    fig = plots.plot_hessian_density(frame, "t")
    assert [ax.get_title() for ax in fig.axes] == ["sgd", "saf"]
    assert fig.axes[0].get_yscale() == "log" and fig.axes[0].get_xlim() == fig.axes[1].get_xlim()
    assert len(fig.axes[0].get_lines()) == 3  # two seeds and the zero marker
    table = plots.density_table(frame)
    sgd = table.set_index("Method").loc["sgd"]
    assert sgd["Seeds"] == "0 1"
    assert sgd["Largest eigenvalue"].startswith("12 ± 2.8")  # mean of 10 and 14, sample std
    assert sgd["Most negative eigenvalue"].startswith("-2 ± 1.4")
    assert sgd["Mass below 0 (%)"] == "15.00 ± 7.07"
    assert table.set_index("Method").loc["saf", "Most negative eigenvalue"] == "0"
