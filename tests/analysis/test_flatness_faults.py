"""A Hessian or landscape measured before a resume is never shown as the finished run's."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analysis.measure.landscape import load_landscape
from analysis.report import build_report
from analysis.report.run_files import hessian_curves, landscape_files
from bench.cli import main
from bench.results import result_row

RUN = ["run", "--method", "sgd", "--dataset", "synthetic", "--model", "mlp_tiny", "--epochs", "2",
       "--batch-size", "16", "--train-subset", "64", "--device", "cpu", "--num-workers", "0", "--no-progress"]
HESSIAN = ["--samples", "16", "--trace-samples", "2", "--device", "cpu"]


def test_stale_hessian_is_not_the_final_models(tmp_path: Path, interrupt_run_at,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    interrupt_run_at(1)
    assert main([*RUN, "--out", str(out)]) == 130  # interrupted after epoch 0's checkpoint
    interrupt_run_at(None)
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]

    # Measuring the unfinished run needs a flag, and records the epoch it measured.
    capsys.readouterr()
    assert main(["hessian", str(run_dir), *HESSIAN]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(run_dir) in err and "--allow-unfinished" in err
    assert not (run_dir / "hessian.json").exists()
    assert main(["hessian", str(run_dir), *HESSIAN, "--allow-unfinished"]) == 0
    assert main(["landscape", str(run_dir), "--samples", "16", "--resolution", "3", "--device", "cpu",
                 "--allow-unfinished"]) == 0
    stale = json.loads((run_dir / "hessian.json").read_text())
    assert stale["epoch"] == 1 and load_landscape(run_dir / "landscape_1d.npz")[1]["epoch"] == 1

    # Resumed to the end: the epoch-1 measurements stay on disk but are not the run's.
    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    row = result_row(run_dir)
    assert row["epochs_completed"] == 2 and "lambda_max" not in row
    report = build_report(out, tmp_path / "report", figures=False)
    assert "lambda_max" not in report.rows.columns or report.rows["lambda_max"].isna().all()
    assert hessian_curves(report.rows).empty and landscape_files(report.rows).empty

    # Measured again at the end: now it is.
    assert main(["hessian", str(run_dir), *HESSIAN]) == 0
    final = json.loads((run_dir / "hessian.json").read_text())
    assert final["epoch"] == 2 and result_row(run_dir)["lambda_max"] == final["lambda_max"]
    curve = hessian_curves(build_report(out, tmp_path / "report2", figures=False).rows)
    assert curve["epoch"].tolist() == [1] and curve["lambda_max"].tolist() == [final["lambda_max"]]
    assert main(["landscape", str(run_dir), "--samples", "16", "--resolution", "3", "--device", "cpu"]) == 0
    assert len(landscape_files(build_report(out, tmp_path / "report3", figures=False).rows)) == 1
    assert pd.notna(final["lambda_max"])
