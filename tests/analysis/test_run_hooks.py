"""The Hessian measured during a run reaches bench through its run hook (bench.plugins), never by bench
importing analysis: the hook's files agree with `safbench hessian` on the same checkpoint, and a run that
asks for a Hessian with no hook installed refuses in one line before writing anything."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analysis.flatness import hessian_for_run_dir
from bench import plugins, records
from bench.cli import main
from bench.config import RunConfig
from bench.run import run

TINY = {"method": "sgd", "dataset": "synthetic", "model": "mlp_tiny", "epochs": 2, "batch_size": 32,
        "train_subset": 64, "device": "cpu", "num_workers": 0, "progress": False, "hessian_samples": 32}


def test_the_installed_hook_measures_the_chosen_epochs_and_the_final_model(tmp_path: Path) -> None:
    assert "hessian" in plugins.loaded(plugins.RUN_HOOKS)  # declared in pyproject.toml, found by group name
    summary = run(RunConfig.from_dict({**TINY, "out": str(tmp_path), "hessian": True, "hessian_epochs": [0]}))
    run_dir = tmp_path / summary["run_dir"]
    at_epochs = pd.read_csv(run_dir / records.HESSIAN_EPOCHS)
    assert at_epochs["epoch"].tolist() == [0]  # 0-based, as in metrics.csv
    final = json.loads((run_dir / records.HESSIAN).read_text())
    assert final["epoch"] == 2
    # Measured again from the stored checkpoint, outside the run: the same model, the same fixed batches.
    again = hessian_for_run_dir(run_dir, samples=32, device="cpu")
    assert again["epoch"] == 2
    assert again["lambda_max"] == pytest.approx(final["lambda_max"], rel=1e-4)


def test_no_hook_installed_refuses_hessian_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    real = plugins.loaded
    monkeypatch.setattr(plugins, "loaded", lambda group: {} if group == plugins.RUN_HOOKS else real(group))
    argv = ["run", *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress"],
            "--no-progress", "--hessian", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the Hessian run hook" in err[0]
    assert not (tmp_path / "out").exists()


def test_without_the_installed_entry_points_an_analysis_command_says_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(plugins, "loaded", lambda group: {})
    with pytest.raises(SystemExit) as exited:
        main(["report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and "scripts/setup.sh" in err[0]
