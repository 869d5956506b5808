"""A model built for the other image size is refused in one line naming the one meant; workers fit the machine."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from bench.config import RunConfig
from bench.data import create_data
from tests.bench.conftest import write_imagenet
from tests.cli_util import run_main


@pytest.mark.parametrize(("dataset", "model", "meant"), [
    ("imagenet", "resnet18", "timm:resnet18"), ("imagenet", "wrn28_10", "timm:wide_resnet50_2"),
    ("cifar10", "timm:resnet18", "resnet18"), ("fashionmnist", "timm:vit_small_patch32_224", "resnet18"),
])
def test_a_mismatched_model_is_refused_naming_the_one_meant(tmp_path: Path, dataset: str, model: str,
                                                           meant: str) -> None:
    res = run_main("run", "--dataset", dataset, "--model", model, "--out", str(tmp_path))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert f"--model {meant}," in res.stderr and "--allow-input-mismatch" in res.stderr
    assert not any(tmp_path.iterdir())


def test_the_override_trains_it_and_keeps_the_run_name(tmp_path: Path) -> None:
    write_imagenet(tmp_path / "data", per_class=2, val_per_class=1, size=24)
    args = ("run", "--dataset", "imagenet", "--model", "cnn_small", "--batch-size", "2", "--epochs", "1",
            "--device", "cpu", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "runs"),
            "--num-workers", "0", "--no-progress")
    assert run_main(*args).returncode == 2
    res = run_main(*args, "--allow-input-mismatch")
    assert res.returncode == 0, res.stderr
    plain = RunConfig.from_dict({"dataset": "cifar10", "model": "resnet18"})
    allowed = RunConfig.from_dict({"dataset": "cifar10", "model": "resnet18", "allow_input_mismatch": True})
    assert plain.run_name() == allowed.run_name()


def test_a_grid_with_a_mismatched_cell_runs_nothing(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: imagenet, epochs: 1}\ngrid: {model: [timm:resnet18, resnet18]}\n")
    res = run_main("grid", str(grid), "--out", str(tmp_path / "runs"))
    assert res.returncode == 2 and "timm:resnet18" in res.stderr and not (tmp_path / "runs").exists()


def test_num_workers_defaults_to_the_cores_this_process_may_use(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert RunConfig.from_dict({}).num_workers is None
    assert RunConfig.from_dict({}).resolved("cpu").num_workers == cores
    write_imagenet(tmp_path, per_class=2, val_per_class=1, size=24)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = create_data("imagenet", root=tmp_path, batch_size=2, device="cpu", seed=0, img_size=16)
        next(iter(data.train_batches(0)))
    assert data._train_loader.num_workers == cores
    assert not [w for w in caught if "worker" in str(w.message)]
