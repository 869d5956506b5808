"""`safbench overhead` (bench.measure.cli): the CSVs it writes, and one-line errors with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.measure.methods import METHODS


def test_cli_writes_three_csvs_with_provenance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["overhead", "--device", "cpu", "--models", "mlp_tiny", "--batch-size", "8", "--steps", "1",
               "--repeats", "2", "--warmup", "1", "--num-samples", "64", "--out", str(tmp_path),
               "--loop", "--loop-samples", "32", "--store-report", "--store-samples", "200",
               "--store-batch-size", "16"])
    assert rc == 0
    files = {p.name.split("-")[0]: p for p in tmp_path.iterdir()}
    assert set(files) == {"steps", "loop", "store"}
    assert all(p.name.split("-")[1] == "cpu" and p.suffix == ".csv" for p in files.values())
    steps = pd.read_csv(files["steps"])
    assert list(steps["method"]) == list(METHODS)
    for col in ("git_commit", "device_name", "command", "torch_version", "hostname"):
        assert col in steps.columns and steps[col].notna().all()
    assert steps["command"].iloc[0].count("overhead") == 1
    assert list(pd.read_csv(files["loop"])["method"]) == ["sgd", "saf"]
    store = pd.read_csv(files["store"])
    assert set(store["section"]) == {"size", "exchange", "dtype_error"}
    shown = capsys.readouterr().out
    assert "saf_official" in shown and "time x SGD" in shown and "7.69 GB" in shown
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_cli_adds_sgd_and_explains(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["overhead", "--device", "cpu", "--models", "mlp_tiny", "--methods", "saf",
               "--batch-size", "8", "--steps", "1", "--repeats", "1", "--warmup", "0", "--num-samples", "16",
               "--out", str(tmp_path)])
    assert rc == 0
    assert "sgd added" in capsys.readouterr().out
    (csv,) = tmp_path.glob("steps-*.csv")
    assert list(pd.read_csv(csv)["method"]) == ["sgd", "saf"]


def run_cli(args: list[str]) -> int:
    """main()'s exit status, argparse's own exits (bad choices) included."""
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "sgd", "lion"], "method 'lion' is unknown"),
    (["--batch-size", "0"], "--batch-size=0"),
    (["--models", "resnet1000"], "unknown model 'resnet1000'"),
    (["--precision", "fp8"], "invalid choice"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              args: list[str], message: str) -> None:
    rc = run_cli(["overhead", "--device", "cpu", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_gpu(capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["overhead", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
