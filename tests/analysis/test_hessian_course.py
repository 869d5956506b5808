"""λ_max through training (the run hook, analysis.flatness): exact sample counts, epochs refused before
training, the true-label and flipped-only measurements under label noise, and a course that survives kills
at the points the crash hook chooses (bench.faultpoints) with one row per epoch, measured once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.flatness import hessian_for_run_dir, load_run
from analysis.measure.hessian import top_eigenvalues
from bench import records
from bench.config import RunConfig
from bench.data import create_data
from bench.data.resident import symmetric_label_noise
from bench.faultpoints import CRASH_ENV, CRASH_EXIT
from bench.run import run
from tests.bench.grid_util import REPO, bench_cmd, cli_env
from tests.cli_util import run_main

TINY = {"method": "sgd", "dataset": "synthetic", "model": "mlp_tiny", "epochs": 3, "batch_size": 32,
        "train_subset": 96, "device": "cpu", "num_workers": 0, "progress": False, "hessian_samples": 40,
        "hessian_epochs": [0, 1, 2]}


def test_samples_are_measured_exactly_not_in_whole_batches(tmp_path: Path) -> None:
    summary = run(RunConfig.from_dict({**TINY, "train_subset": 512, "epochs": 1, "hessian_epochs": [],
                                       "out": str(tmp_path)}))
    run_dir = tmp_path / summary["run_dir"]
    measured = hessian_for_run_dir(run_dir, samples=256, trace_samples=2, device="cpu")
    assert measured["num_examples"] == 256 and measured["samples"] == 256  # not 2 batches of 250 = 500
    stored = json.loads((run_dir / records.HESSIAN).read_text())
    assert stored["num_examples"] == 256 and stored["algorithm"] == "lanczos"
    assert stored["eigen_hvps"] > 0 and stored["hvps"] == stored["eigen_hvps"] + 2


@pytest.mark.parametrize("epochs", [[-5], [3], [0, 7]])
def test_hessian_epochs_outside_the_run_are_refused_in_one_line(tmp_path: Path, epochs: list[int]) -> None:
    result = run_main("run", "--dataset", "synthetic", "--model", "mlp_tiny", "--epochs", "3", "--device",
                            "cpu", "--out", str(tmp_path), "--hessian-epochs", *map(str, epochs))
    err = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in err and "hessian_epochs" in err and "0..2" in err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_true_labels_and_flipped_images_are_measured_on_their_own_labels(tmp_path: Path) -> None:
    config = RunConfig.from_dict({**TINY, "label_noise": 0.4, "hessian_epochs": [1], "out": str(tmp_path)})
    run_dir = tmp_path / run(config)["run_dir"]
    row = pd.read_csv(run_dir / records.HESSIAN_EPOCHS).iloc[0]
    # The same images and labels rebuilt another way: sample indices of the seed-0 pass, the clean labels of
    # the noise-free set, the noisy ones by drawing the noise again over the whole clean label array.
    clean = create_data("synthetic", batch_size=40, device=torch.device("cpu"), seed=0, train_subset=96,
                        num_workers=0, augment=False)
    idx, images, _ = next(iter(clean.train_batches(0)))
    true = clean.train_targets[idx]
    noisy = torch.from_numpy(symmetric_label_noise(clean.train_targets.numpy(), clean.num_classes, 0.4))[idx]
    flipped = noisy != true
    assert 0 < int(flipped.sum()) < len(idx)  # they differ
    _, model, batches = load_run(run_dir, torch.device("cpu"), 40)
    assert torch.equal(batches[0][1], noisy)  # the run's own measurement uses the labels it trained on

    def lam(x: torch.Tensor, y: torch.Tensor) -> float:
        return top_eigenvalues(model, [(x, y)], k=1, tol=1e-6).eigenvalues[0]

    # The run measured epoch 1's model; the checkpoint holds epoch 2's: measure the final one both ways.
    measured = hessian_for_run_dir(run_dir, samples=40, trace_samples=0, device="cpu")
    assert measured["num_examples_flipped"] == int(flipped.sum())
    assert measured["lambda_max_true_labels"] == pytest.approx(lam(images, true), rel=1e-3)
    assert measured["lambda_max_flipped"] == pytest.approx(lam(images[flipped], noisy[flipped]), rel=1e-3)
    assert measured["lambda_max"] == pytest.approx(lam(images, noisy), rel=1e-3)
    assert abs(measured["lambda_max_true_labels"] - measured["lambda_max"]) > 1e-3 * measured["lambda_max"]
    assert np.isfinite(row["lambda_max_true_labels"]) and row["num_examples_flipped"] == int(flipped.sum())


def _course(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / records.HESSIAN_EPOCHS)


def test_the_course_survives_kills_one_row_per_epoch_measured_once(tmp_path: Path) -> None:
    whole = run(RunConfig.from_dict({**TINY, "out": str(tmp_path / "whole")}))
    expected = _course(tmp_path / "whole" / whole["run_dir"])
    assert expected["epoch"].tolist() == [0, 1, 2] and (expected["hvps"] > 0).all()
    assert expected["trace"].isna().all()  # the course is λ_max alone

    out = tmp_path / "killed"
    args = ["run", "--dataset", "synthetic", "--model", "mlp_tiny", "--epochs", "3", "--batch-size", "32",
            "--train-subset", "96", "--device", "cpu", "--num-workers", "0", "--no-progress",
            "--hessian-samples", "40", "--hessian-epochs", "0", "1", "2", "--out", str(out)]

    def attempt(point: str | None, resume: bool) -> int:
        env = {**cli_env(), **({CRASH_ENV: point} if point else {})}
        return subprocess.run(bench_cmd(*args, *(["--resume"] if resume else [])), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300).returncode

    # Killed after epoch 1's measurement and checkpoint: the rows of epochs 0 and 1 are kept as written.
    assert attempt("after-checkpoint-e2", resume=False) == CRASH_EXIT
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    before = _course(run_dir)
    assert before["epoch"].tolist() == [0, 1]
    # Killed again after epoch 2's measurement, before its checkpoint: that epoch is trained and measured again.
    assert attempt("checkpoint-shards-e3", resume=True) == CRASH_EXIT
    assert _course(run_dir)["epoch"].tolist() == [0, 1, 2]
    assert attempt(None, resume=True) == 0
    after = _course(run_dir)
    assert after["epoch"].tolist() == [0, 1, 2]  # none lost, none twice
    pd.testing.assert_frame_equal(after.iloc[:2], before)  # not measured again: even `seconds` unchanged
    assert after["lambda_max"].tolist() == pytest.approx(expected["lambda_max"].tolist(), rel=1e-6)


def test_the_hooks_cost_counts_every_view_and_the_final_measurement() -> None:
    from analysis.flatness import run_hook_hvps
    from analysis.measure.eigen import hvps_per_measurement

    clean = RunConfig.from_dict({**TINY, "hessian": True})
    noisy = RunConfig.from_dict({**TINY, "hessian": True, "label_noise": 0.2})
    top1 = hvps_per_measurement(1, 0)
    assert run_hook_hvps(clean) == 3 * top1 + hvps_per_measurement(3, 50)
    assert run_hook_hvps(noisy) == 9 * top1 + hvps_per_measurement(3, 50) + 2 * top1
    from bench import plugins

    assert plugins.loaded(plugins.RUN_HOOKS)["hessian"].hvps(noisy) == run_hook_hvps(noisy)  # reachable from bench
