"""`safbench data check`: read every file of a dataset once and name each bad one, before a run meets it.

CIFAR: every batch file through the loader's restricted unpickler, its format (a `data` array of
N x 3072 bytes, N labels in range) and the counts the layout promises. Fashion-MNIST: the four IDX
archives (gzip intact, header, counts, labels in range). ImageNet-format folders: every image of
train/ and val/ decoded by the loader's own code (torchvision's loader, as training calls it), in
DataLoader workers with a progress bar. It reports counts per split and class, the image sizes seen,
and one line per bad file (path: what is wrong); the exit status is 0 when all is sound, 1 otherwise.

Not resumable: a pass that is cut is rerun whole (each file is read once per pass and nothing is written);
the decoding runs in as many workers as the process has cores (--num-workers), so a pass over ImageNet
costs about what one epoch's data loading costs.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bench.data.base import default_root, default_workers
from bench.errors import UsageError

# Samples per file of the real datasets: (each training file, each test file).
CIFAR_COUNTS = {"cifar10": (10_000, 10_000), "cifar100": (50_000, 10_000)}
FASHIONMNIST_COUNTS = {"train": 60_000, "test": 10_000}


@dataclass
class SplitCounts:
    """What one split holds: samples per class, and the image sizes (W x H) seen."""

    per_class: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.per_class.values())


@dataclass
class CheckReport:
    dataset: str
    root: Path
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # "path: what is wrong", one per bad file
    files_read: int = 0

    @property
    def sound(self) -> bool:
        return not self.bad

    def lines(self) -> list[str]:
        out = [f"{self.dataset} in {self.root}: {self.files_read:,} files read"]
        for name, split in self.splits.items():
            classes = sorted(split.per_class.items())
            shown = ", ".join(f"{c}: {n:,}" for c, n in classes[:10]) + (", ..." if len(classes) > 10 else "")
            counts = [n for _, n in classes]
            spread = f" (per class {min(counts):,}-{max(counts):,})" if counts else ""
            out.append(f"  {name}: {split.total:,} samples in {len(classes)} classes{spread}: {shown}")
            if split.sizes:
                common = ", ".join(f"{w}x{h} ({n:,})" for (w, h), n in split.sizes.most_common(3))
                widths = [w for w, _ in split.sizes]
                heights = [h for _, h in split.sizes]
                out.append(f"    image sizes: {len(split.sizes):,} distinct, most common {common}; width "
                           f"{min(widths)}-{max(widths)}, height {min(heights)}-{max(heights)}")
        out.append(f"{len(self.bad)} bad file{'s' if len(self.bad) != 1 else ''}" if self.bad else "all files sound")
        return out


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ---- CIFAR -----------------------------------------------------------------------------------------
def check_cifar(name: str, root: Path, **_: Any) -> CheckReport:
    from bench.data.cifar import CIFAR10, CIFAR100, read_batch

    layout = CIFAR10 if name == "cifar10" else CIFAR100
    folder = root / layout.folder
    report = CheckReport(name, folder)
    train_n, test_n = CIFAR_COUNTS[name]
    per_file = {**{f: train_n for f in layout.train_files}, **{f: test_n for f in layout.test_files}}
    for split, files in (("train", layout.train_files), ("test", layout.test_files)):
        counts = report.splits.setdefault(split, SplitCounts())
        for f in files:
            path = folder / f
            if not path.is_file():
                report.bad.append(f"{path}: missing")
                continue
            report.files_read += 1
            try:
                batch = read_batch(path)
            except UsageError as exc:
                report.bad.append(f"{path}: {str(exc).removeprefix(str(path)).strip()}")
                continue
            problem = _cifar_problem(batch, layout.label_key, layout.num_classes, per_file[f])
            if problem:
                report.bad.append(f"{path}: {problem}")
                continue
            counts.per_class.update(int(y) for y in batch[layout.label_key])
            counts.sizes[(32, 32)] += len(batch[layout.label_key])
    return report


def _cifar_problem(batch: dict, label_key: bytes, num_classes: int, expected: int) -> str | None:
    if b"data" not in batch or label_key not in batch:
        return f"no {'data' if b'data' not in batch else label_key.decode()} entry (keys: " \
               f"{', '.join(k.decode() if isinstance(k, bytes) else str(k) for k in batch)})"
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        return f"data is {data.dtype} {tuple(data.shape)}, expected uint8 (N, 3072)"
    if len(labels) != len(data):
        return f"{len(data)} images but {len(labels)} labels"
    if len(data) != expected:
        return f"{len(data)} images, expected {expected}"
    if len(labels) and not (0 <= labels.min() and labels.max() < num_classes):
        return f"labels outside 0..{num_classes - 1} (min {labels.min()}, max {labels.max()})"
    return None


# ---- Fashion-MNIST ---------------------------------------------------------------------------------
def check_fashionmnist(name: str, root: Path, **_: Any) -> CheckReport:
    from bench.data.fashionmnist import find_fashionmnist, read_idx, search_dirs

    files = find_fashionmnist(root)
    if files is None:
        raise UsageError(f"fashionmnist not found in {', '.join(str(d) for d in search_dirs(root))}")
    report = CheckReport(name, files["train_images"].parent)
    expected = FASHIONMNIST_COUNTS
    for split in ("train", "test"):
        arrays = {}
        for kind in ("images", "labels"):
            path = files[f"{split}_{kind}"]
            report.files_read += 1
            try:
                arrays[kind] = read_idx(path)
            except UsageError as exc:
                report.bad.append(f"{path}: {str(exc).removeprefix(str(path)).strip()}")
            except Exception as exc:  # noqa: BLE001 - a damaged gzip stream: BadGzipFile, EOFError, zlib.error
                report.bad.append(f"{path}: {_cause(exc)}")
        if len(arrays) < 2:
            continue
        images, labels = arrays["images"], arrays["labels"]
        problem = (f"images are {tuple(images.shape)}, expected (N, 28, 28)" if images.ndim != 3
                   or images.shape[1:] != (28, 28) else
                   f"{len(images)} images but {len(labels)} labels" if len(images) != len(labels) else
                   f"{len(images)} samples, expected {expected[split]}" if len(images) != expected[split] else
                   f"labels outside 0..9 (max {labels.max()})" if labels.max() > 9 else None)
        if problem:
            report.bad.append(f"{files[f'{split}_images']}: {problem}")
            continue
        counts = report.splits.setdefault(split, SplitCounts())
        counts.per_class.update(labels.tolist())
        counts.sizes[(28, 28)] += len(images)
    return report


# ---- ImageNet-format folders -----------------------------------------------------------------------
class _Decode(Dataset):
    """(index, (width, height) or None, what is wrong or None) per image, decoded by the loader's code."""

    def __init__(self, samples: list[tuple[str, int]], loader: Callable[[str], Any]) -> None:
        self.samples, self.loader = samples, loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, tuple[int, int] | None, str | None]:
        path = self.samples[i][0]
        try:
            image = self.loader(path)
            return i, tuple(image.size), None
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
            return i, None, _cause(exc)


def _as_list(items: list) -> list:
    return items


def _decode_all(samples: list[tuple[str, int]], loader: Callable, workers: int, desc: str):
    loader_ = DataLoader(_Decode(samples, loader), batch_size=64, num_workers=workers,
                         collate_fn=_as_list)
    show = sys.stderr.isatty()
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not show, leave=False) as bar:
        for items in loader_:
            yield from items
            bar.update(len(items))


def check_imagefolder(name: str, root: Path, *, num_workers: int | None = None, **_: Any) -> CheckReport:
    from torchvision import datasets

    report = CheckReport(name, root)
    workers = default_workers() if num_workers is None else num_workers
    for split in ("train", "val"):
        path = root / split
        if not path.is_dir():
            report.bad.append(f"{path}: missing (an ImageNet-format root holds train/<class>/ and val/<class>/)")
            continue
        try:
            folder = datasets.ImageFolder(str(path))
        except FileNotFoundError as exc:
            report.bad.append(f"{path}: {exc}")
            continue
        counts = report.splits.setdefault(split, SplitCounts())
        for index, size, problem in _decode_all(folder.samples, folder.loader, workers, split):
            report.files_read += 1
            file, target = folder.samples[index]
            if problem is not None:
                report.bad.append(f"{file}: {problem}")
                continue
            counts.per_class[folder.classes[target]] += 1
            counts.sizes[size] += 1
    return report


CHECKERS: dict[str, Callable[..., CheckReport]] = {
    "cifar10": check_cifar, "cifar100": check_cifar, "fashionmnist": check_fashionmnist,
    "imagenet": check_imagefolder,
}


def check_data(name: str, root: str | Path | None = None, *, num_workers: int | None = None) -> CheckReport:
    """Read every file of dataset `name` under `root` once; UsageError for a dataset with no files."""
    checker = CHECKERS.get(name)
    if checker is None:
        raise UsageError(f"dataset={name!r} has no files to check: allowed are {', '.join(CHECKERS)}")
    where = Path(root).expanduser() if root is not None else default_root()
    return checker(name, where, num_workers=num_workers)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="check a dataset's files before training on them")
    sub = p.add_subparsers(dest="data_command", required=True)
    c = sub.add_parser("check", help="read every file once; one line per bad file; exit 1 if any",
                       description=__doc__.split("\n\n")[0])
    c.add_argument("--dataset", required=True, choices=sorted(CHECKERS))
    c.add_argument("--data-root", help="dataset folder (default: $SAFBENCH_DATA or ~/.cache/safbench/data)")
    c.add_argument("--num-workers", type=int, help="decoding workers (default: the cores this process may use)")
    c.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    if args.num_workers is not None and args.num_workers < 0:
        raise UsageError(f"--num-workers={args.num_workers} is invalid: allowed values are integers >= 0")
    report = check_data(args.dataset, args.data_root, num_workers=args.num_workers)
    for line in report.lines():
        print(line, flush=True)
    for line in report.bad:
        sys.stderr.write(f"bad file: {line}\n")
    sys.stderr.flush()
    return 0 if report.sound else 1

