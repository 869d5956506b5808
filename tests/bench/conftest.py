"""Fixtures writing tiny fake datasets in the real on-disk layouts (never downloads).

Each `fake_<name>` fixture returns a FakeDataset (root plus the raw arrays it wrote, for content
checks); each `fake_<name>_root` returns just the root for tests that only need a loadable set.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@dataclass
class FakeDataset:
    root: Path
    train_images: np.ndarray  # (N, C, H, W) uint8, in true dataset order
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray


def _random_split(rng: np.random.Generator, n: int, shape: tuple[int, ...], classes: int):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int64)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(root: Path, per_batch: int = 16, num_test: int = 24, seed: int = 0) -> FakeDataset:
    """torchvision's cifar-10-batches-py/: data_batch_1..5 and test_batch, pickled dicts of bytes keys."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x, y = _random_split(rng, 5 * per_batch, (3, 32, 32), 10)
    tx, ty = _random_split(rng, num_test, (3, 32, 32), 10)
    for b in range(5):
        s = slice(b * per_batch, (b + 1) * per_batch)
        _dump(
            folder / f"data_batch_{b + 1}",
            {
                b"batch_label": f"training batch {b + 1} of 5".encode(),
                b"labels": y[s].tolist(),  # a plain list, as in the real files
                b"data": x[s].reshape(per_batch, -1),  # rows of 3072 bytes, channel-major
                b"filenames": [b"img.png"] * per_batch,
            },
        )
    _dump(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": ty.tolist(),
            b"data": tx.reshape(num_test, -1),
            b"filenames": [b"t.png"] * num_test,
        },
    )
    _dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
    return FakeDataset(root, x, y, tx, ty)


def write_cifar100(root: Path, num_train: int = 80, num_test: int = 24, seed: int = 1) -> FakeDataset:
    """torchvision's cifar-100-python/: train and test with b'fine_labels' and b'coarse_labels'."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x, y = _random_split(rng, num_train, (3, 32, 32), 100)
    tx, ty = _random_split(rng, num_test, (3, 32, 32), 100)
    for name, (a, b) in {"train": (x, y), "test": (tx, ty)}.items():
        _dump(
            folder / name,
            {
                b"filenames": [b"f.png"] * len(a),
                b"batch_label": name.encode(),
                b"fine_labels": b.tolist(),
                b"coarse_labels": (b // 5).tolist(),
                b"data": a.reshape(len(a), -1),
            },
        )
    _dump(folder / "meta", {b"fine_label_names": [b"x"] * 100, b"coarse_label_names": [b"y"] * 20})
    return FakeDataset(root, x, y, tx, ty)


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashionmnist(folder: Path, gz: bool, num_train: int = 60, num_test: int = 20, seed: int = 2):
    """The four IDX files in `folder`, gzipped (Debian's layout) or not (torchvision's extracted raw/)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = _random_split(rng, num_train, (1, 28, 28), 10)
    tx, ty = _random_split(rng, num_test, (1, 28, 28), 10)
    arrays = {
        "train-images-idx3-ubyte": x[:, 0],
        "train-labels-idx1-ubyte": y,
        "t10k-images-idx3-ubyte": tx[:, 0],
        "t10k-labels-idx1-ubyte": ty,
    }
    for stem, a in arrays.items():
        data = _idx_bytes(a)
        if gz:
            with gzip.open(folder / f"{stem}.gz", "wb") as fh:
                fh.write(data)
        else:
            (folder / stem).write_bytes(data)
    return x, y, tx, ty


def write_imagenet(root: Path, per_class: int = 4, val_per_class: int = 2, size: int = 32) -> FakeDataset:
    """root/{train,val}/<class>/ with JPEGs for one class and PNGs for the other.

    Red is a distinct constant per image (identifies it after any crop or resize), green is
    constant, blue is noise (so different crops give different tensors). Arrays are returned in
    ImageFolder's order (sorted class, then sorted file name) with C=3 and only the red value
    meaningful for JPEGs.
    """
    rng = np.random.default_rng(3)
    out: dict[str, tuple[list, list]] = {}
    red = iter(range(16, 256, 24))  # 10 values 24 apart: robust to JPEG error
    for split, n in (("train", per_class), ("val", val_per_class)):
        images, labels = [], []
        for label, (cls, ext) in enumerate((("n01_jpeg", "JPEG"), ("n02_png", "png"))):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = np.empty((size, size, 3), np.uint8)
                img[..., 0] = next(red) if split == "train" else 0
                img[..., 1] = 128
                img[..., 2] = rng.integers(0, 256, (size, size))
                Image.fromarray(img).save(root / split / cls / f"img_{i:03d}.{ext}", quality=95)
                images.append(img.transpose(2, 0, 1))
                labels.append(label)
        out[split] = (images, labels)
    arr = {k: (np.stack(v[0]), np.array(v[1], np.int64)) for k, v in out.items()}
    return FakeDataset(root, *arr["train"], *arr["val"])


@pytest.fixture
def fake_cifar10(tmp_path: Path) -> FakeDataset:
    return write_cifar10(tmp_path / "data")


@pytest.fixture
def fake_cifar10_root(fake_cifar10: FakeDataset) -> Path:
    return fake_cifar10.root


@pytest.fixture
def fake_cifar100(tmp_path: Path) -> FakeDataset:
    return write_cifar100(tmp_path / "data")


@pytest.fixture
def fake_cifar100_root(fake_cifar100: FakeDataset) -> Path:
    return fake_cifar100.root


@pytest.fixture
def fake_fashionmnist(tmp_path: Path) -> FakeDataset:
    """Debian's layout: the four .gz files directly in the root."""
    root = tmp_path / "fashion-mnist"
    return FakeDataset(root, *write_fashionmnist(root, gz=True))


@pytest.fixture
def fake_fashionmnist_root(fake_fashionmnist: FakeDataset) -> Path:
    return fake_fashionmnist.root


@pytest.fixture
def fake_fashionmnist_torchvision(tmp_path: Path) -> FakeDataset:
    """torchvision's layout: extracted files under root/FashionMNIST/raw/."""
    root = tmp_path / "data"
    return FakeDataset(root, *write_fashionmnist(root / "FashionMNIST" / "raw", gz=False))


@pytest.fixture
def fake_imagenet(tmp_path: Path) -> FakeDataset:
    return write_imagenet(tmp_path / "imagenet")


@pytest.fixture
def fake_imagenet_root(fake_imagenet: FakeDataset) -> Path:
    return fake_imagenet.root


@pytest.fixture
def no_system_fashionmnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide system-wide Fashion-MNIST installs (e.g. Debian's) so 'missing' really is missing."""
    import bench.data.fashionmnist as fm

    monkeypatch.setattr(fm, "SYSTEM_DIRS", [tmp_path / "no-system-fashion-mnist"])
