"""CIFAR-10/100 from torchvision's on-disk layout of pickled batches, held on the device.

The pickles are read directly: torchvision's loader md5-checks every file, which would reject
the small fakes tests write; its downloader is still used for `download=True`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.base import LoaderOptions
from bench.data.registry import register_dataset
from bench.data.resident import Augmentation, ResidentData
from bench.data.stats import CIFAR10_MEAN_STD, CIFAR100_MEAN_STD, MeanStd
from bench.errors import UsageError


@dataclass(frozen=True)
class CifarLayout:
    name: str
    folder: str  # under root, as torchvision extracts it
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean_std: MeanStd


CIFAR10 = CifarLayout(
    "cifar10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    b"labels",
    10,
    CIFAR10_MEAN_STD,
)
CIFAR100 = CifarLayout(
    "cifar100", "cifar-100-python", ("train",), ("test",), b"fine_labels", 100, CIFAR100_MEAN_STD
)


def _read_batches(folder: Path, files: tuple[str, ...], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # stored CHW
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _download(layout: CifarLayout, root: Path) -> None:
    import torchvision.datasets as tvd  # only needed here

    cls = tvd.CIFAR10 if layout is CIFAR10 else tvd.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a failed checksum a RuntimeError
        raise UsageError(f"could not download {layout.name} into {root}: {e}") from None


def load_cifar(layout: CifarLayout, root: Path, download: bool = False) -> tuple[tuple, tuple]:
    """((train images, labels), (test images, labels)) as uint8 NCHW and int64 numpy arrays."""
    folder = root / layout.folder
    needed = [folder / f for f in layout.train_files + layout.test_files]
    if download and not all(p.is_file() for p in needed):
        _download(layout, root)
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise UsageError(
            f"{layout.name} not found: missing {missing[0]} (looked in {folder}); "
            "rerun with --download, or point the data root at a folder containing "
            f"{layout.folder}/"
        )
    return (
        _read_batches(folder, layout.train_files, layout.label_key),
        _read_batches(folder, layout.test_files, layout.label_key),
    )


def _create(layout: CifarLayout, opts: LoaderOptions, augment: bool) -> ResidentData:
    train, test = load_cifar(layout, opts.root, opts.download)
    aug = Augmentation(pad=4, flip=True) if augment else None
    return ResidentData.from_numpy(layout.name, train, test, layout.num_classes, layout.mean_std, opts, aug)


@register_dataset("cifar10")
def cifar10(opts: LoaderOptions, *, augment: bool = True) -> ResidentData:
    """CIFAR-10: 50k/10k 3x32x32, 10 classes; crop (pad 4) + flip."""
    return _create(CIFAR10, opts, augment)


@register_dataset("cifar100")
def cifar100(opts: LoaderOptions, *, augment: bool = True) -> ResidentData:
    """CIFAR-100 (fine labels): 50k/10k 3x32x32, 100 classes; crop (pad 4) + flip."""
    return _create(CIFAR100, opts, augment)
