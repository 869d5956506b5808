"""The limits that must be SAM on a real run of the label-noise regime's shape: ESAM with beta = gamma = 1 and
LookSAM with k = 1 train the regime's model (resnet14_s2, BatchNorm, no augmentation, label noise) through
`safbench run`'s whole path (config, method kwargs and seed, the loop) to SAM's metrics and weights. The
optimizers' own tests check the steps on tiny models; this checks that nothing between config and step
(a method seed, a selection pass, BatchNorm updates) makes the limits differ on the runs of issue 25."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.config import RunConfig
from bench.records import CHECKPOINT, METRICS
from bench.run import run

REGIME = dict(dataset="synthetic", model="resnet14_s2", epochs=2, batch_size=32, lr=0.1, train_subset=128,
              augment=False, label_noise=0.25, device="cpu", num_workers=0, progress=False, seed=3)
COMPARED = ["train_loss", "train_acc", "test_loss", "test_acc", "train_acc_clean", "train_acc_flipped_noisy",
            "train_acc_flipped_true"]


def _train(tmp_path: Path, method: str, **hp) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    summary = run(RunConfig.from_dict({**REGIME, "method": method, "out": str(tmp_path / method), **hp}))
    run_dir = tmp_path / method / summary["run_dir"]
    weights = torch.load(run_dir / CHECKPOINT, weights_only=True)["model"]
    metrics = pd.read_csv(run_dir / METRICS).assign(flipped_fraction=summary["label_noise_flipped"] / 128)
    return metrics, weights


@pytest.fixture(scope="module")
def sam(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    return _train(tmp_path_factory.mktemp("sam"), "sam")


def test_esam_with_beta_and_gamma_one_is_sam_bit_for_bit(tmp_path: Path, sam) -> None:
    metrics, weights = _train(tmp_path, "esam", beta=1.0, gamma=1.0)
    pd.testing.assert_frame_equal(metrics[COMPARED], sam[0][COMPARED], check_exact=True)
    assert all(torch.equal(weights[k], sam[1][k]) for k in sam[1])  # BatchNorm buffers included
    assert (metrics["esam_selected_fraction"] == 1.0).all()
    # keeping every sample, its kept samples' flipped share is the training set's
    assert metrics["esam_selected_flipped_share"].tolist() == pytest.approx(metrics["flipped_fraction"].tolist())


def test_looksam_with_k_one_is_sam(tmp_path: Path, sam) -> None:
    metrics, weights = _train(tmp_path, "looksam", k=1)
    pd.testing.assert_frame_equal(metrics[COMPARED], sam[0][COMPARED], check_exact=False, rtol=1e-5, atol=1e-6)
    for k in sam[1]:
        assert torch.allclose(weights[k].float(), sam[1][k].float(), rtol=1e-4, atol=1e-5), k
