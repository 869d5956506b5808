"""One training run: outputs and their fields, resume, divergence, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import optimizers
from bench.config import RunConfig
from bench.errors import UsageError
from bench.run import Run, run
from tests.cli_util import CliResult, run_main

SUMMARY_FIELDS = {"method", "dataset", "model", "seed", "epochs", "status", "final_test_acc", "best_test_acc",
                  "images_per_s", "wall_s", "peak_mem_bytes", "hparams", "git_commit", "torch_version",
                  "device_name", "command"}
METRIC_FIELDS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s", "images_per_s",
                 "peak_mem_bytes", "host_rss_bytes"}
EXTRA_FIELD = {"saf": "saf_store_bytes", "esam": "esam_selected_fraction", "mesa": "mesa_ema_bytes"}


def tiny(out: Path, **overrides) -> RunConfig:
    values = dict(dataset="synthetic", model="mlp_tiny", epochs=1, batch_size=16, lr=0.05, train_subset=64,
                  device="cpu", out=str(out), num_workers=0, progress=False)
    values.update(overrides)
    return RunConfig.from_dict(values)


def trajectory_active(method: str) -> dict:
    return {"e_tilde": 1, "e_start": 1} if method == "saf" else {"e_start": 1} if method == "mesa" else {}


@pytest.mark.parametrize("method", optimizers.METHODS)
def test_one_epoch_writes_every_output(tmp_path: Path, method: str) -> None:
    config = tiny(tmp_path, method=method, epochs=2, **trajectory_active(method))
    summary = run(config, command="test")
    run_dir = config.run_dir()
    assert run_dir.name.startswith(f"synthetic-mlp_tiny-{method}-s0-")
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.csv", "checkpoint.pt", "summary.json"}
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    assert SUMMARY_FIELDS <= set(on_disk)
    assert on_disk["status"] == "finished" and on_disk["method"] == method and on_disk["epochs"] == 2
    assert 0.0 <= on_disk["final_test_acc"] <= on_disk["best_test_acc"] <= 1.0
    assert on_disk["images_per_s"] > 0 and on_disk["wall_s"] > 0 and on_disk["peak_mem_bytes"] > 0
    assert on_disk["hparams"] == config.hparams()

    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1]
    assert METRIC_FIELDS <= set(metrics.columns)
    if method in EXTRA_FIELD:
        assert EXTRA_FIELD[method] in metrics.columns
    assert on_disk["final_test_acc"] == pytest.approx(metrics["test_acc"].iloc[-1])

    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert RunConfig.from_record(resolved).config_hash() == config.config_hash()
    assert resolved["precision"] == "fp32" and resolved["channels_last"] is False and resolved["device"] == "cpu"
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and set(checkpoint["model"]) == set(Run(
        tiny(tmp_path / "other", method=method, **trajectory_active(method))).net.state_dict())


def test_fashionmnist_subset_run(tmp_path: Path, fake_fashionmnist_root: Path) -> None:
    config = tiny(tmp_path, dataset="fashionmnist", model="cnn_small", method="saf",
                  data_root=str(fake_fashionmnist_root), train_subset=32, batch_size=16, epochs=1)
    summary = run(config)
    assert summary["status"] == "finished" and summary["num_samples"] == 32
    assert summary["extras"]["saf_store_bytes"] == 32 * 3 * (10 * 2 + 2)  # N x e_tilde x (C fp16 + int16 epoch)


@pytest.mark.parametrize("method", ["sgd", "esam", "saf", "mesa", "gsam", "looksam"])  # looksam resumes mid-cycle
def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path: Path, method: str, interrupt_run_at) -> None:
    hp = trajectory_active(method)
    whole = tiny(tmp_path / "whole", method=method, epochs=3, model="cnn_small", **hp)
    run(whole)

    parts = tiny(tmp_path / "parts", method=method, epochs=3, model="cnn_small", **hp)
    interrupt_run_at(2)
    with pytest.raises(KeyboardInterrupt):
        run(parts)
    assert not (parts.run_dir() / "summary.json").exists()
    assert torch.load(parts.run_dir() / "checkpoint.pt", weights_only=True)["epoch"] == 2
    interrupt_run_at(None)
    run(parts, resume=True)

    cols = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    a = pd.read_csv(whole.run_dir() / "metrics.csv")[cols]
    b = pd.read_csv(parts.run_dir() / "metrics.csv")[cols]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    wa = torch.load(whole.run_dir() / "checkpoint.pt", weights_only=True)
    wb = torch.load(parts.run_dir() / "checkpoint.pt", weights_only=True)
    for name, tensor in wa["model"].items():
        assert torch.equal(tensor, wb["model"][name]), name


def test_resume_of_a_finished_run_returns_its_summary(tmp_path: Path) -> None:
    config = tiny(tmp_path)
    first = run(config)
    again = run(config, resume=True)
    assert again == json.loads(json.dumps(first, default=str))


def test_nan_loss_ends_as_diverged(tmp_path: Path) -> None:
    config = tiny(tmp_path, lr=1e30, epochs=3, momentum=0.0)
    summary = run(config)
    assert summary["status"] == "diverged"
    assert summary["epochs_completed"] <= 3
    metrics = pd.read_csv(config.run_dir() / "metrics.csv")
    assert not metrics["train_loss"].map(math.isfinite).iloc[-1]
    assert json.loads((config.run_dir() / "summary.json").read_text())["status"] == "diverged"


def test_checkpoint_from_another_config_is_refused(tmp_path: Path) -> None:
    config = tiny(tmp_path, epochs=1)
    run(config)
    state = torch.load(config.run_dir() / "checkpoint.pt", weights_only=True)
    state["config_hash"] = "0000000000"
    state["identity"] = {**state["identity"], "lr": 123.0}
    torch.save(state, config.run_dir() / "checkpoint.pt")
    (config.run_dir() / "summary.json").unlink()
    with pytest.raises(UsageError, match="another config.*lr"):
        run(config, resume=True)


def test_existing_run_dir_is_not_overwritten(tmp_path: Path) -> None:
    config = tiny(tmp_path)
    run(config)
    before = (config.run_dir() / "summary.json").read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        run(config)
    assert (config.run_dir() / "summary.json").read_bytes() == before


def _cli(*args: str, cwd: Path) -> CliResult:
    return run_main(*args, cwd=cwd)


BASE = ["run", "--dataset", "synthetic", "--model", "mlp_tiny", "--epochs", "1", "--batch-size", "16",
        "--train-subset", "32", "--device", "cpu"]


@pytest.mark.parametrize("bad, needle", [
    (["--method", "adam"], "'adam'"),
    (["--dataset", "mnist"], "mnist"),
    (["--model", "resnet9000"], "resnet9000"),
    (["--method", "sam", "--rho", "-1"], "rho=-1"),
    (["--method", "esam", "--gamma", "1.5"], "gamma=1.5"),
    (["--method", "saf", "--tau", "0"], "tau=0"),
    (["--method", "saf", "--rho", "0.1"], "rho is not a hyperparameter"),
    (["--dataset", "cifar10", "--data-root", "MISSING"], "MISSING"),
    (["--epochs", "0"], "epochs=0"),
    (["--bogus-flag", "1"], "bogus"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, bad: list[str], needle: str) -> None:
    out = tmp_path / "out"
    args = BASE + ["--out", str(out)] + bad
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not out.exists()


def test_unwritable_output_folder_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _cli(*BASE, "--out", str(blocker / "runs"), cwd=tmp_path)
    assert result.returncode == 2 and "not writable" in result.stderr
    assert blocker.read_text() == "not a folder"


def test_config_file_with_flag_override(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"method": "saf", "dataset": "synthetic", "model": "mlp_tiny", "epochs": 1,
                                   "batch_size": 16, "train_subset": 32, "device": "cpu", "lam": 0.5}))
    result = _cli("run", "--config", str(cfg), "--lam", "0.7", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (summary_path,) = (tmp_path / "o").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["hparams"]["lam"] == 0.7 and summary["method"] == "saf"
    assert summary["command"].startswith("safbench run --config")


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: sgd\nlearning_rate: 0.1\n")
    result = _cli("run", "--config", str(cfg), cwd=tmp_path)
    assert result.returncode == 2 and "learning_rate" in result.stderr


def test_config_hash_ignores_where_and_fills_method_defaults(tmp_path: Path) -> None:
    a = tiny(tmp_path / "a", method="saf")
    b = tiny(tmp_path / "b", method="saf", lam=0.3, tau=5.0, num_workers=2)
    c = tiny(tmp_path / "a", method="saf", lam=0.4)
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_git_commit_is_read_once_per_process(tmp_path: Path, monkeypatch) -> None:
    # The code a process runs is the code it loaded: a commit made while a grid runs must not relabel it.
    from bench import provenance

    provenance.git_commit.cache_clear()
    first = provenance.git_commit()
    assert first != "unknown"

    def no_git(*args, **kwargs):
        raise AssertionError("git was asked again")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    summary = run(RunConfig.from_dict({"method": "sgd", "dataset": "synthetic", "model": "mlp_tiny", "epochs": 1,
                                       "batch_size": 16, "train_subset": 32, "device": "cpu", "num_workers": 0,
                                       "progress": False, "out": str(tmp_path)}))
    assert summary["git_commit"] == first
