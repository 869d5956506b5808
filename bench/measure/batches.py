"""The data the benchmarks feed: the dataset shapes measured, and pools of synthetic batches on the device.

Batches are made before any timing and already sit on the device, so no loader is in the timed region;
SAF's indices sweep a whole dataset of N samples, as in training (cycling a few batches' rows would
keep its store in cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IMAGENET_SAMPLES = 1_281_167
CIFAR_SAMPLES = 50_000
BATCH_POOL = 2  # distinct pre-made image batches cycled through (the indices always sweep N samples)


@dataclass(frozen=True)
class DataShape:
    image: tuple[int, int, int]
    num_classes: int
    num_samples: int  # the dataset size SAF's store is sized for by default


SHAPES: dict[str, DataShape] = {
    "cifar10": DataShape((3, 32, 32), 10, CIFAR_SAMPLES),
    "cifar100": DataShape((3, 32, 32), 100, CIFAR_SAMPLES),
    "imagenet": DataShape((3, 224, 224), 1000, IMAGENET_SAMPLES),
    "fashionmnist": DataShape((1, 28, 28), 10, 60_000),  # the CPU-sized real-data grid's shape
}


@dataclass
class BatchPool:
    """A few image batches on the device and index batches sweeping N samples (drop-last, shuffled)."""

    images: list[Tensor]
    targets: list[Tensor]
    index_batches: Tensor  # [N // B, B] int64 on the device

    @classmethod
    def synthetic(cls, shape: DataShape, batch_size: int, num_samples: int, device: torch.device, *,
                  seed: int = 0, channels_last: bool = False) -> BatchPool:
        g = torch.Generator().manual_seed(seed)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        images = [torch.randn(batch_size, *shape.image, generator=g).to(device).contiguous(memory_format=fmt)
                  for _ in range(BATCH_POOL)]
        targets = [torch.randint(0, shape.num_classes, (batch_size,), generator=g).to(device)
                   for _ in range(BATCH_POOL)]
        steps = num_samples // batch_size
        perm = torch.randperm(num_samples, generator=g)[: steps * batch_size].view(steps, batch_size)
        return cls(images, targets, perm.to(device))

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        k = step % len(self.images)
        return self.index_batches[step % self.index_batches.shape[0]], self.images[k], self.targets[k]
