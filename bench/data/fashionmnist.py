"""Fashion-MNIST from IDX files (gzipped or not), held on the device.

Found automatically in torchvision's layout, in the root itself, or where Debian's
`dataset-fashion-mnist` package puts it. IDX is parsed here with numpy because Debian's .gz
files do not match torchvision's md5s.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from bench.data.base import LoaderOptions
from bench.data.registry import register_dataset
from bench.data.resident import Augmentation, ResidentData
from bench.data.stats import FASHIONMNIST_MEAN_STD
from bench.errors import UsageError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets/fashion-mnist")]
"""Searched after the root; a module attribute so tests can point it elsewhere."""


def search_dirs(root: Path) -> list[Path]:
    """Where to look, in order: torchvision's raw/ folder, the root itself, system-wide installs."""
    return [root / "FashionMNIST" / "raw", root, *SYSTEM_DIRS]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x0000 08 ndim, big-endian int32 dims, then the data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise UsageError(f"{path} is not an unsigned-byte IDX file (header {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UsageError(f"{path} is truncated: header says {dims}, found {body.size} bytes")
    return body.reshape(dims)


def _find_file(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def find_fashionmnist(root: Path) -> dict[str, Path] | None:
    """The first folder holding all four files (each plain or .gz), or None."""
    for folder in search_dirs(root):
        found = {k: _find_file(folder, stem) for k, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def load_fashionmnist(root: Path, download: bool = False) -> tuple[tuple, tuple]:
    """((train images (N,1,28,28) uint8, labels int64), (test images, labels))."""
    files = find_fashionmnist(root)
    if files is None and download:
        import torchvision.datasets as tvd  # only needed here

        try:
            tvd.FashionMNIST(str(root), train=True, download=True)  # fills root/FashionMNIST/raw
        except (OSError, RuntimeError) as e:  # URLError is an OSError; a failed checksum a RuntimeError
            raise UsageError(f"could not download fashionmnist into {root}: {e}") from None
        files = find_fashionmnist(root)
    if files is None:
        looked = ", ".join(str(d) for d in search_dirs(root))
        raise UsageError(
            f"fashionmnist not found: looked for {FILES['train_images']}[.gz] and friends in {looked}; "
            "rerun with --download, or `apt-get install dataset-fashion-mnist`"
        )

    def images(key: str) -> np.ndarray:
        return read_idx(files[key])[:, None]  # add the channel axis

    def labels(key: str) -> np.ndarray:
        return read_idx(files[key]).astype(np.int64)

    return (images("train_images"), labels("train_labels")), (images("test_images"), labels("test_labels"))


@register_dataset("fashionmnist", img_size=28)
def fashionmnist(opts: LoaderOptions, *, augment: bool = True) -> ResidentData:
    """Fashion-MNIST: 60k/10k 1x28x28, 10 classes; crop (pad 4), no flip."""
    train, test = load_fashionmnist(opts.root, opts.download)
    aug = Augmentation(pad=4, flip=False) if augment else None
    return ResidentData.from_numpy("fashionmnist", train, test, 10, FASHIONMNIST_MEAN_STD, opts, aug)
