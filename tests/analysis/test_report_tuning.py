"""The report's Tuning section and the tuned/default naming of a tuned folder's runs, on records written directly
(tuning.csv, selected.json and fresh-seed run directories as `safbench tune` leaves them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.report.build import build_report
from analysis.report.tuning import BOTH, DEFAULT, TUNED
from bench import io
from bench.records import SELECTED, TUNING
from tests.analysis.conftest import curve, write_run

LR_DEFAULT, LR_CHOSEN = 0.1, 0.05


def write_tuned_folder(folder: Path) -> None:
    """sgd keeps its defaults; saf's trial 1 (lr 0.05) wins on validation although trial 2 would on test."""
    rows, selected = [], {}
    trials = {"sgd": [{"lr": LR_DEFAULT}, {"lr": 0.3}],
              "saf": [{"lr": LR_DEFAULT, "lam": 0.3}, {"lr": LR_CHOSEN, "lam": 0.5}, {"lr": 0.2, "lam": 0.1}]}
    val = {"sgd": [0.70, 0.60], "saf": [0.70, 0.74, 0.72]}
    for method, settings in trials.items():
        for trial, setting in enumerate(settings):
            for seed in (100, 101):
                rows.append({"method": method, "trial": trial, "setting": json.dumps(setting), "seed": seed,
                             "status": "finished", "final_val_acc": val[method][trial] + 0.01 * (seed - 100),
                             "best_val_acc": val[method][trial] + 0.02, "val_best_epoch": 1, "train_time_s": 1.0,
                             "run_dir": f"{method}-{trial}-{seed}"})
        best = int(np.argmax(val[method]))
        selected[method] = {"trial": best, "setting": settings[best], "mean_val_acc": val[method][best] + 0.005,
                            "mean_train_time_s": 1.0, "seeds": [100, 101], "readout": "final", "trials": len(settings),
                            "rule": "highest mean validation accuracy"}
    folder.mkdir(parents=True)
    io.write_csv(folder / TUNING, pd.DataFrame(rows))
    io.write_json(folder / SELECTED, selected)
    rng = np.random.default_rng(0)
    common = {"dataset": "synthetic", "epochs": 3, "val_size": 16}
    for seed in range(5):
        write_run(folder, curve(rng, 3), method="sgd", lr=LR_DEFAULT, seed=seed, **common)
        write_run(folder, curve(rng, 3), method="saf", lr=LR_DEFAULT, lam=0.3, seed=seed, **common)
        write_run(folder, curve(rng, 3), method="saf", lr=LR_CHOSEN, lam=0.5, seed=seed, **common)


def test_the_tuning_section_shows_trials_choices_and_names_the_runs(tmp_path: Path) -> None:
    write_tuned_folder(tmp_path / "results" / "tuned")
    report = build_report(tmp_path / "results", figures=True)
    text = report.report.read_text()
    assert "## Tuning" in text and "Tuning trials of `results/tuned`" in text
    chosen = pd.read_csv(next(t.files["csv"] for t in report.tables if t.title.startswith("Chosen settings")))
    assert dict(zip(chosen["method"], chosen["chosen"], strict=True)) == {"sgd": "(the defaults)",
                                                                          "saf": "lam=0.5, lr=0.05"}
    trials = pd.read_csv(next(t.files["csv"] for t in report.tables if t.title.startswith("Tuning trials")))
    saf = trials[trials["method"] == "saf"].set_index("trial")
    assert saf["chosen"].tolist() == [False, True, False]
    assert np.allclose(saf["val_final"], [70.5, 74.5, 72.5])  # the mean over the two tuning seeds, in %
    rows = report.rows
    named = dict(zip(zip(rows["method"], rows["lr"], strict=True), rows["setting"], strict=True))
    assert named == {("sgd", LR_DEFAULT): BOTH, ("saf", LR_DEFAULT): DEFAULT, ("saf", LR_CHOSEN): TUNED}
    assert any(f.section == "tuning" and f.png.exists() for f in report.figures)
