"""Label noise: what each method fits (clean and flipped samples, counted in the loop), ESAM's share of flipped
samples among those it keeps, and the noise drawn per run seed (`label_noise_seed: run`)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import Tensor

import optimizers
from bench.config import RunConfig
from bench.loop import TrainLoop
from bench.records import METRICS
from bench.run import Run
from optimizers.base import StepOutput
from tests.optimizers.tiny import CLASSES, MODELS, base_optimizer, data


def tiny(out: Path, **overrides) -> RunConfig:
    values = dict(dataset="synthetic", model="mlp_tiny", epochs=1, batch_size=16, lr=0.05, train_subset=256,
                  device="cpu", out=str(out), num_workers=0, progress=False, label_noise=0.4)
    values.update(overrides)
    return RunConfig.from_dict(values)


# ---- what each method fits ---------------------------------------------------------------------------------
class _Scripted:
    """A stand-in method whose steps return given logits, so the loop's counts can be checked by hand."""

    def __init__(self, logits: list[Tensor]) -> None:
        self.logits, self.device = iter(logits), torch.device("cpu")

    def step(self, inputs: Tensor, targets: Tensor, indices: Tensor) -> StepOutput:
        return StepOutput(torch.zeros(()), next(self.logits))

    def watch_samples(self, flagged: Tensor) -> None:
        self.flagged = flagged


class _NoSchedule:
    def step(self) -> None:
        pass


def test_loop_counts_clean_and_flipped_fits_as_a_sample_by_sample_count() -> None:
    g = torch.Generator().manual_seed(3)
    n, classes = 40, 5
    true = torch.randint(0, classes, (n,), generator=g)
    flipped = torch.rand(n, generator=g) < 0.3
    noisy = torch.where(flipped, (true + 1 + torch.randint(0, classes - 1, (n,), generator=g)) % classes, true)
    order = torch.randperm(n, generator=g)
    batches = [order[i:i + 8] for i in range(0, n, 8)]
    logits = [torch.randn(8, classes, generator=g) for _ in batches]
    # Make some predictions hit the noisy label and some the true label of flipped samples.
    for idx, z in zip(batches, logits, strict=True):
        z[0, noisy[idx[0]]] += 10
        z[1, true[idx[1]]] += 10
    loop = TrainLoop(_Scripted(logits), _NoSchedule(), flipped, true)  # type: ignore[arg-type]
    loop.run((idx, torch.zeros(len(idx), 1), noisy[idx]) for idx in batches)
    expected = [0, 0, 0, 0, 0]
    for idx, z in zip(batches, logits, strict=True):
        for i, row in zip(idx.tolist(), z, strict=True):
            pred = int(row.argmax())
            if flipped[i]:
                expected[2] += 1
                expected[3] += pred == int(noisy[i])
                expected[4] += pred == int(true[i])
            else:
                expected[0] += 1
                expected[1] += pred == int(noisy[i])
    assert loop.fit.tolist() == expected
    assert expected[2] > 0 and expected[3] > 0 and expected[4] > 0  # every count is exercised
    assert int(loop.correct) == expected[1] + expected[3]


def test_a_noisy_run_logs_the_fits_and_they_add_up_to_its_training_accuracy(tmp_path: Path) -> None:
    run = Run(tiny(tmp_path, epochs=2))
    run.train()
    metrics = pd.read_csv(run.run_dir / METRICS)
    flipped = run.data.label_noise_flipped
    clean = run.data.num_samples - flipped
    for r in metrics.itertuples():
        # train_acc is counted over all samples by another sum: the two fits weighted by their counts give it back
        assert (r.train_acc_clean * clean + r.train_acc_flipped_noisy * flipped) / (clean + flipped) == \
            pytest.approx(r.train_acc, abs=1e-12)
        assert 0 <= r.train_acc_flipped_true + r.train_acc_flipped_noisy <= 1  # one prediction per sample
    clean_run = Run(tiny(tmp_path / "clean", label_noise=0.0))
    clean_run.train()
    assert "train_acc_clean" not in pd.read_csv(clean_run.run_dir / METRICS).columns


# ---- ESAM's selection ---------------------------------------------------------------------------------------
def _esam_selection(gamma: float, flagged: Tensor, steps: int = 3) -> tuple[float, float]:
    """(ESAM's reported share of flagged samples among those its descent pass kept, the same share counted here
    from the batches the descent pass received)."""
    model = MODELS["mlp"]()
    x, y = data("mlp", 24)
    x = x + torch.arange(24).unsqueeze(1) * 1e-3  # distinct rows, so a kept row names its sample
    method = optimizers.create("esam", model, base_optimizer("sgd", model), rho=0.1, beta=1.0, gamma=gamma)
    method.watch_samples(flagged)
    method.set_epoch(0)
    kept: list[int] = []
    inner = method.second_pass_batch

    def spy(inputs: Tensor, targets: Tensor, clean_losses: Tensor) -> tuple[Tensor, Tensor]:
        xs, ys = inner(inputs, targets, clean_losses)
        kept.extend(int((x == row).all(1).nonzero()) for row in xs)
        return xs, ys

    method.second_pass_batch = spy  # type: ignore[method-assign]
    for s in range(steps):
        idx = torch.arange(8 * s, 8 * s + 8)
        method.step(x[idx], y[idx], idx)
    reported = method.extra_metrics()["esam_selected_flipped_share"]
    return reported, int(flagged[kept].sum()) / len(kept)


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_esam_reports_the_share_of_flipped_samples_it_kept(gamma: float) -> None:
    flagged = torch.arange(24) % 3 == 0
    reported, counted = _esam_selection(gamma, flagged)
    assert reported == pytest.approx(counted, abs=1e-12)
    if gamma == 1.0:
        assert reported == pytest.approx(1 / 3)  # every sample kept


def test_esam_share_starts_afresh_every_epoch_and_is_absent_without_noise() -> None:
    model = MODELS["mlp"]()
    method = optimizers.create("esam", model, base_optimizer("sgd", model), rho=0.1)
    assert "esam_selected_flipped_share" not in method.extra_metrics()
    method.watch_samples(torch.ones(24, dtype=torch.bool))
    x, y = data("mlp", 8)
    method.set_epoch(0)
    method.step(x, y, torch.arange(8))
    assert method.extra_metrics()["esam_selected_flipped_share"] == 1.0
    method.set_epoch(1)
    assert math.isnan(method.extra_metrics()["esam_selected_flipped_share"])
    assert CLASSES > 1


# ---- noise per seed -----------------------------------------------------------------------------------------
def test_noise_drawn_per_run_seed_differs_across_seeds_and_not_across_methods(tmp_path: Path) -> None:
    def labels(**kw) -> Tensor:
        return Run(tiny(tmp_path / str(len(list(tmp_path.iterdir()))), **kw)).data.train_targets

    per_run = {s: labels(seed=s, label_noise_seed="run") for s in (0, 1)}
    assert not torch.equal(per_run[0], per_run[1])
    assert torch.equal(labels(seed=1, label_noise_seed="run", method="sam"), per_run[1])
    assert torch.equal(labels(seed=1, label_noise_seed="run", method="esam"), per_run[1])
    fixed = labels(seed=0)
    assert torch.equal(labels(seed=1), fixed)  # the default: one draw for every seed
    assert not torch.equal(per_run[0], fixed) and not torch.equal(per_run[1], fixed)


def test_the_default_draw_keeps_the_run_names_and_a_draw_per_seed_renames() -> None:
    base = dict(dataset="synthetic", model="mlp_tiny", label_noise=0.25, seed=2)
    plain = RunConfig.from_dict(base)
    assert RunConfig.from_dict({**base, "label_noise_seed": "fixed"}).run_name() == plain.run_name()
    assert RunConfig.from_dict({**base, "label_noise_seed": "run"}).run_name() != plain.run_name()
    assert "label_noise_seed" not in plain.identity()


def test_a_draw_per_seed_without_noise_is_refused_in_one_line(tmp_path: Path) -> None:
    from tests.cli_util import run_main

    result = run_main("run", "--dataset", "synthetic", "--model", "mlp_tiny", "--label-noise-seed", "run",
                      "--out", str(tmp_path))
    assert result.returncode == 2 and "label_noise is 0" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not any(tmp_path.iterdir())
