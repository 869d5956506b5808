"""`--tensorboard`: each epoch's metrics.csv row as TensorBoard scalars, read back from the event files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.config import RunConfig
from bench.run import run
from bench.tensorboard_log import TAG_PREFIX, TENSORBOARD_DIR

TINY = {"model": "mlp_tiny", "dataset": "synthetic", "method": "sgd", "batch_size": 32, "train_subset": 64,
        "device": "cpu", "num_workers": 0, "progress": False, "epochs": 2}
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard (optional extra) is not installed")
def test_event_files_hold_every_metrics_row(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(RunConfig.from_dict({**TINY, "tensorboard": True, "out": str(tmp_path)}), command="safbench run ...")
    (run_dir,) = (p for p in tmp_path.iterdir() if not p.name.startswith("."))  # .grid: the run's lock
    metrics = pd.read_csv(run_dir / "metrics.csv")
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    numeric = [c for c in metrics.columns if c != "epoch" and pd.api.types.is_numeric_dtype(metrics[c])
               and metrics[c].notna().all()]
    assert {TAG_PREFIX + c for c in numeric} <= tags
    for column in numeric:
        scalars = events.Scalars(TAG_PREFIX + column)
        assert [s.step for s in scalars] == metrics["epoch"].tolist()
        assert [s.value for s in scalars] == pytest.approx(metrics[column].tolist(), rel=1e-6)


def test_without_the_flag_no_event_files_and_the_same_run_name(tmp_path: Path) -> None:
    plain = RunConfig.from_dict({**TINY, "out": str(tmp_path)})
    assert RunConfig.from_dict({**TINY, "tensorboard": True, "out": str(tmp_path)}).run_name() == plain.run_name()
    run(plain, command="safbench run ...")
    (run_dir,) = (p for p in tmp_path.iterdir() if not p.name.startswith("."))  # .grid: the run's lock
    assert not (run_dir / TENSORBOARD_DIR).exists()


def test_missing_tensorboard_is_a_usage_error_before_the_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    argv = ["run", *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress"],
            "--tensorboard", "--out", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "tensorboard" in err and "\n" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
