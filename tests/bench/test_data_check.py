"""`safbench data check` on real-format folders with each kind of bad file, and a bad image met mid-run.

Files are written in the real formats (CIFAR pickles of numpy arrays, IDX archives, JPEG/PNG images by
PIL), then damaged as a disk or a copy damages them: a JPEG cut short, an empty file, text named .JPEG, a
CIFAR batch whose label count disagrees with its images.
"""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest

from bench import faultpoints
from bench.data import check
from bench.data.base import BadDataFile
from tests.bench.conftest import write_cifar10, write_fashionmnist, write_imagenet
from tests.cli_util import run_main


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("bad file: ")]


def test_a_sound_imagefolder_is_counted_per_split_and_class(tmp_path: Path) -> None:
    write_imagenet(tmp_path, per_class=3, val_per_class=2, size=24)
    res = run_main("data", "check", "--dataset", "imagenet", "--data-root", str(tmp_path), "--num-workers", "0")
    assert res.returncode == 0, res.stderr
    assert "train: 6 samples in 2 classes" in res.stdout and "n01_jpeg: 3" in res.stdout
    assert "val: 4 samples in 2 classes" in res.stdout and "24x24 (4)" in res.stdout
    assert "all files sound" in res.stdout and not _bad_lines(res.stderr)


def test_each_bad_image_is_named_in_one_line(tmp_path: Path) -> None:
    write_imagenet(tmp_path, per_class=3, val_per_class=2, size=48)
    truncated = tmp_path / "train" / "n01_jpeg" / "img_001.JPEG"
    _truncate(truncated)
    empty = tmp_path / "val" / "n02_png" / "img_000.png"
    empty.write_bytes(b"")
    text = tmp_path / "train" / "n02_png" / "notes.png"
    text.write_text("not an image at all\n")
    res = run_main("data", "check", "--dataset", "imagenet", "--data-root", str(tmp_path), "--num-workers", "2")
    assert res.returncode == 1
    bad = _bad_lines(res.stderr)
    assert len(bad) == 3, bad
    named = {line.split(": ", 2)[1]: line for line in bad}
    assert set(named) == {str(truncated), str(empty), str(text)}
    assert "truncated" in named[str(truncated)]
    assert "3 bad files" in res.stdout
    assert "train: 5 samples" in res.stdout  # 7 files, 5 sound ones counted


def test_cifar_batches_are_checked_for_format_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path, per_batch=16, num_test=24)
    monkeypatch.setitem(check.CIFAR_COUNTS, "cifar10", (16, 24))
    res = run_main("data", "check", "--dataset", "cifar10", "--data-root", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "train: 80 samples in" in res.stdout and "test: 24 samples" in res.stdout
    folder = tmp_path / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    batch[b"labels"] = batch[b"labels"][:15]  # 16 images, 15 labels
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    _truncate(folder / "test_batch")
    res = run_main("data", "check", "--dataset", "cifar10", "--data-root", str(tmp_path))
    assert res.returncode == 1
    bad = _bad_lines(res.stderr)
    assert len(bad) == 2
    assert f"{folder / 'data_batch_2'}: 16 images but 15 labels" in bad[0]
    assert str(folder / "test_batch") in bad[1] and "not a readable CIFAR batch" in bad[1]


def test_a_cifar_batch_short_of_the_real_count_is_bad(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=16)  # consistent in itself, but the real files hold 10,000 each
    report = check.check_data("cifar10", tmp_path)
    assert not report.sound and len(report.bad) == 6
    assert report.bad[0].endswith("data_batch_1: 16 images, expected 10000")


def test_fashionmnist_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.data.fashionmnist.SYSTEM_DIRS", [])
    monkeypatch.setattr(check, "FASHIONMNIST_COUNTS", {"train": 60, "test": 20})
    write_fashionmnist(tmp_path, gz=True, num_train=60, num_test=20)
    report = check.check_data("fashionmnist", tmp_path)
    assert report.sound and report.splits["train"].total == 60 and report.splits["test"].total == 20
    archive = tmp_path / "t10k-images-idx3-ubyte.gz"
    _truncate(archive)
    report = check.check_data("fashionmnist", tmp_path)
    assert [line.split(": ")[0] for line in report.bad] == [str(archive)]
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "rb") as fh:
        data = fh.read()
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(data[:-1])  # a sound gzip of a short IDX file
    report = check.check_data("fashionmnist", tmp_path)
    assert len(report.bad) == 2 and "truncated" in report.bad[0]


def test_grid_check_data_stops_before_the_first_cell(tmp_path: Path) -> None:
    write_imagenet(tmp_path / "data", per_class=2, val_per_class=1, size=24)
    _truncate(tmp_path / "data" / "train" / "n01_jpeg" / "img_000.JPEG")
    grid = tmp_path / "g.yaml"
    grid.write_text(f"base: {{dataset: imagenet, model: timm:resnet18, allow_input_mismatch: true, epochs: 1, "
                    f"batch_size: 2, device: cpu, num_workers: 0, data_root: {tmp_path / 'data'}}}\n"
                    "grid: {method: [sgd]}\n")
    res = run_main("grid", str(grid), "--out", str(tmp_path / "runs"), "--check-data")
    assert res.returncode == 1
    assert "bad file:" in res.stderr and "img_000.JPEG" in res.stderr and "grid not started" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_data_file_recovers_its_line_from_a_worker_traceback() -> None:
    wrapped = ("Caught BadDataFile in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nbench.data.base.BadDataFile: /d/a.JPEG: OSError: image file is truncated')
    assert str(BadDataFile.one_line(BadDataFile(wrapped))) == "/d/a.JPEG: OSError: image file is truncated"


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_image_met_mid_run_stops_it_in_one_line_keeping_the_checkpoint(
        tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    write_imagenet(tmp_path / "data", per_class=2, val_per_class=1, size=24)
    bad = tmp_path / "data" / "train" / "n01_jpeg" / "img_001.JPEG"
    saved: dict[str, bytes] = {}
    reached = faultpoints.reached

    def damage_after_first_checkpoint(point: str, rank: int | None = None) -> None:
        reached(point, rank)
        if point == "after-checkpoint-e1":  # every epoch reads every training image: epoch 1 meets it
            (run_dir,) = (tmp_path / "runs").glob("imagenet-*")
            saved["checkpoint"] = (run_dir / "checkpoint.pt").read_bytes()
            _truncate(bad)

    monkeypatch.setattr(faultpoints, "reached", damage_after_first_checkpoint)
    res = run_main("run", "--dataset", "imagenet", "--model", "cnn_small", "--allow-input-mismatch", "--batch-size",
                   "2", "--epochs", "2", "--device", "cpu", "--data-root", str(tmp_path / "data"), "--out",
                   str(tmp_path / "runs"), "--num-workers", str(workers), "--no-progress")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("safbench: run failed: BadDataFile: ") and str(bad) in lines[0]
    assert "truncated" in lines[0].lower() and "Traceback" not in res.stderr
    (run_dir,) = (tmp_path / "runs").glob("imagenet-*")
    assert (run_dir / "checkpoint.pt").read_bytes() == saved["checkpoint"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_completed"] == 1 and str(bad) in summary["error"]
