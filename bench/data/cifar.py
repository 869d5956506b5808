"""CIFAR-10/100 from torchvision's on-disk layout of pickled batches, held on the device.

The pickles are read directly: torchvision's loader md5-checks every file, which would reject
the small fakes tests write; its downloader is still used for `download=True`. They are read with
a restricted unpickler that admits only what the format holds (dicts, lists, bytes, str, numbers
and numpy arrays rebuilt by numpy's own functions): a crafted file under a shared --data-root
cannot run code, it is refused in one line.
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


# The only globals a CIFAR batch pickle refers to: numpy's array and scalar reconstructors (under
# numpy 1's and numpy 2's module names) and, in protocol-2 pickles written by Python 3, bytes.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"), ("builtins", "bytes"), ("__builtin__", "bytes"),
})


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path) -> None:
        super().__init__(fh, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UsageError(f"{self.path} refers to {module}.{name}, which a CIFAR batch file never holds: "
                             "refusing to unpickle it (replace the file with the real dataset, e.g. --download "
                             "into an empty data root)")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One pickled CIFAR batch (a dict with bytes keys), read by the restricted unpickler."""
    try:
        with open(path, "rb") as fh:
            batch = _BatchUnpickler(fh, path).load()
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or not a pickle: many types
        raise UsageError(f"{path} is not a readable CIFAR batch file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'truncated'}); replace it with the real "
                         "dataset, e.g. --download into an empty data root") from None
    if not isinstance(batch, dict):
        raise UsageError(f"{path} is not a CIFAR batch file (holds a {type(batch).__name__}, not a dict); "
                         "replace it with the real dataset")
    return batch


def _read_batches(folder: Path, files: tuple[str, ...], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for f in files:
        batch = read_batch(folder / f)
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


@register_dataset("cifar10", img_size=32)
def cifar10(opts: LoaderOptions, *, augment: bool = True) -> ResidentData:
    """CIFAR-10: 50k/10k 3x32x32, 10 classes; crop (pad 4) + flip."""
    return _create(CIFAR10, opts, augment)


@register_dataset("cifar100", img_size=32)
def cifar100(opts: LoaderOptions, *, augment: bool = True) -> ResidentData:
    """CIFAR-100 (fine labels): 50k/10k 3x32x32, 100 classes; crop (pad 4) + flip."""
    return _create(CIFAR100, opts, augment)
