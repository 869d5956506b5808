"""ImageNet (or any class-folder tree root/train/<class>/*, root/val/<class>/*), streamed from disk.

Too big to hold on the device, so a DataLoader with workers decodes and augments on the CPU.
The sampler shards like DistributedSampler and shares the resident loaders' (seed, epoch)
permutation; each sample's random crop is seeded by (seed, epoch, index), so an epoch is
reproducible whatever the number of workers and without touching the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets, transforms

from bench.data.base import BadDataFile, LoaderOptions
from bench.data.registry import register_dataset
from bench.data.sampling import derive_seed, epoch_generator, shard, steps_per_epoch
from bench.data.stats import IMAGENET_MEAN_STD
from bench.errors import UsageError

SampleKey = tuple[int, int]  # (epoch, true dataset index)


class NamingLoader:
    """The folder's own image loader, raising BadDataFile with the path when a file does not decode (a
    truncated JPEG, an empty file, not an image): one line naming the file instead of a worker traceback."""

    def __init__(self, load: Callable[[str], Any]) -> None:
        self.load = load

    def __call__(self, path: str) -> Any:
        try:
            return self.load(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise BadDataFile(f"{path}: {type(exc).__name__}: {cause}; replace or remove the file, then continue "
                              "with --resume (safbench data check lists every bad file)") from None


class IndexedFolder(Dataset):
    """An ImageFolder returning (true index, image, target), with per-sample seeded augmentation."""

    def __init__(self, folder: datasets.ImageFolder, transform: transforms.Compose, seed: int) -> None:
        self.folder = folder
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: SampleKey) -> tuple[int, torch.Tensor, int]:
        epoch, index = key
        path, target = self.folder.samples[index]
        image = self.folder.loader(path)
        # torchvision's random transforms draw from the global CPU generator: reseed it for this
        # sample and restore it after, so neither worker count nor the caller's RNG matters.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derive_seed(self.seed, epoch, index))
            x = self.transform(image)
        return index, x, target


class ShardedSampler(Sampler[SampleKey]):
    """This rank's (epoch, index) keys for the epoch set by `set_epoch`, DistributedSampler style."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        perm = torch.randperm(self.num_samples, generator=epoch_generator(self.seed, self.epoch))
        return shard(perm, self.batch_size, self.rank, self.world_size).flatten()

    def __iter__(self) -> Iterator[SampleKey]:
        return ((self.epoch, i) for i in self.indices().tolist())

    def __len__(self) -> int:
        return steps_per_epoch(self.num_samples, self.batch_size, self.world_size) * self.batch_size


def imagenet_transforms(img_size: int, mean_std=IMAGENET_MEAN_STD) -> tuple[transforms.Compose, ...]:
    """(train, eval): RandomResizedCrop+flip; Resize(img_size/0.875)+CenterCrop, both normalised."""
    norm = [transforms.ToTensor(), transforms.Normalize(*mean_std)]
    crop_flip = [transforms.RandomResizedCrop(img_size), transforms.RandomHorizontalFlip()]
    train = transforms.Compose([*crop_flip, *norm])
    resize = round(img_size / 0.875)  # 224 -> 256
    evaluate = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(img_size), *norm])
    return train, evaluate


def _image_folder(path: Path, split: str) -> datasets.ImageFolder:
    if not path.is_dir():
        raise UsageError(
            f"imagenet {split} split not found at {path}; it cannot be downloaded automatically: "
            "point the data root at a folder with train/<class>/*.JPEG and val/<class>/*.JPEG"
        )
    try:
        folder = datasets.ImageFolder(str(path))
    except FileNotFoundError as e:  # no class folders or no images
        raise UsageError(f"imagenet {split} split at {path} is unusable: {e}") from None
    folder.loader = NamingLoader(folder.loader)
    return folder


@dataclass
class StreamingData:
    """Streams batches from disk through DataLoader workers; implements `bench.data.base.Data`."""

    name: str
    train_set: IndexedFolder
    test_set: datasets.ImageFolder
    num_samples: int
    num_classes: int
    img_size: int
    opts: LoaderOptions
    in_chans: int = 3
    resident_bytes: int = 0  # nothing is held on the device

    def __post_init__(self) -> None:
        o = self.opts
        self.sampler = ShardedSampler(self.num_samples, o.batch_size, o.rank, o.world_size, o.seed)
        self._train_loader = self._loader(self.train_set, o.batch_size, sampler=self.sampler, drop_last=True)
        # This rank's share of the test set, in order: samples i with i % world == rank.
        self._test_loader = self._loader(self.test_set, o.test_batch_size,
                                         sampler=range(o.rank, len(self.test_set), o.world_size))

    def _loader(self, dataset: Dataset, batch_size: int, **kw) -> DataLoader:
        o = self.opts
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=o.workers,
            pin_memory=o.device.type == "cuda",
            persistent_workers=o.workers > 0,  # no worker restart each epoch
            # The loader draws worker base seeds on each iteration; keep that off the global RNG.
            generator=torch.Generator().manual_seed(o.seed),
            **kw,
        )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.opts.batch_size

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.opts.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.opts.channels_last else x

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        dev = self.opts.device
        try:
            for idx, x, y in self._train_loader:
                yield idx.to(dev, non_blocking=True), self._to_device(x), y.to(dev, non_blocking=True)
        except BadDataFile as exc:  # from a worker: wrapped in its traceback
            raise BadDataFile.one_line(exc) from None

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in self._test_loader:
                yield self._to_device(x), y.to(self.opts.device, non_blocking=True)
        except BadDataFile as exc:
            raise BadDataFile.one_line(exc) from None


@register_dataset("imagenet", img_size=224)
def imagenet(opts: LoaderOptions, *, img_size: int = 224, augment: bool = True) -> StreamingData:
    """ImageNet-1k class folders (any class count works); `img_size` shrinks it for quick tests."""
    if opts.download:
        raise UsageError(
            "imagenet cannot be downloaded automatically; fetch it yourself and set the data root"
        )
    if img_size < 1:
        raise UsageError(f"imagenet img_size must be >= 1, got {img_size}")
    train_tf, eval_tf = imagenet_transforms(img_size)
    train = _image_folder(opts.root / "train", "train")
    val = _image_folder(opts.root / "val", "val")
    val.transform = eval_tf
    if val.classes != train.classes:
        raise UsageError(
            f"imagenet val classes in {opts.root / 'val'} differ from train classes in {opts.root / 'train'}"
        )
    n = opts.subset_size("imagenet", len(train))
    return StreamingData(
        name="imagenet",
        train_set=IndexedFolder(train, train_tf if augment else eval_tf, opts.seed),
        test_set=val,
        num_samples=n,
        num_classes=len(train.classes),
        img_size=img_size,
        opts=opts,
    )
