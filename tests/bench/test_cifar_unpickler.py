"""CIFAR batch files are unpickled by a restricted unpickler: the format's contents load, code never runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.data.cifar import CIFAR10, load_cifar, read_batch
from bench.errors import UsageError
from tests.bench.conftest import write_cifar10


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_format_loads_under_numpy_1_and_2_module_names(tmp_path: Path) -> None:
    fake = write_cifar10(tmp_path / "data")
    folder = fake.root / CIFAR10.folder
    raw = (folder / "data_batch_1").read_bytes()
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    # As the real files were written (numpy 1 names): same arrays.
    old = folder / "old_batch"
    old.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy._core" not in old.read_bytes()
    for path in (folder / "data_batch_1", old):
        batch = read_batch(path)
        assert np.array_equal(batch[b"data"], fake.train_images[:16].reshape(16, -1))
        assert batch[b"labels"] == fake.train_labels[:16].tolist()
    (train_x, train_y), (test_x, test_y) = load_cifar(CIFAR10, fake.root)
    assert np.array_equal(train_x, fake.train_images) and np.array_equal(test_y, fake.test_labels)


def test_a_pickle_that_would_run_a_command_is_refused(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake = write_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    batch = fake.root / CIFAR10.folder / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(UsageError, match="posix.system|os.system") as exc:
        read_batch(batch)
    assert str(batch) in str(exc.value) and "\n" not in str(exc.value)
    out = tmp_path / "out"
    assert main(["run", "--method", "sgd", "--dataset", "cifar10", "--data-root", str(fake.root), "--model",
                 "mlp_tiny", "--epochs", "1", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(batch) in err and "refusing" in err
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x02}q\x00(U\x04data", b"not a pickle at all",
                                     pickle.dumps([1, 2, 3], protocol=2)])
def test_damaged_batch_files_give_one_line(tmp_path: Path, content: bytes) -> None:
    fake = write_cifar10(tmp_path / "data")
    batch = fake.root / CIFAR10.folder / "test_batch"
    batch.write_bytes(content)
    with pytest.raises(UsageError) as exc:
        load_cifar(CIFAR10, fake.root)
    assert str(batch) in str(exc.value) and "\n" not in str(exc.value)
