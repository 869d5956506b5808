"""A synthetic image dataset for smoke tests and benchmarks that need no files.

Each class has a random template; a sample is its class template averaged with fresh noise, so
the data are deterministic (fixed generator), uint8 like the real sets, and learnable.
"""

from __future__ import annotations

import torch

from bench.data.base import LoaderOptions
from bench.data.registry import register_dataset
from bench.data.resident import Augmentation, ResidentData
from bench.errors import UsageError

# Average of two independent uniforms on [0, 1]: mean 1/2, std sqrt(1/24) ~ 0.204.
SYNTHETIC_MEAN, SYNTHETIC_STD = 0.5, 0.2041


def make_synthetic(
    shape: tuple[int, int, int], num_classes: int, num_train: int, num_test: int, data_seed: int = 0
) -> tuple[tuple, tuple]:
    """((train images uint8 (N,C,H,W), labels int64), (test ...)); same arguments, same tensors."""
    g = torch.Generator().manual_seed(data_seed)
    templates = torch.randint(0, 256, (num_classes, *shape), generator=g, dtype=torch.int16)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.int16)
        images = ((templates[labels] + noise) // 2).to(torch.uint8)
        return images, labels

    return split(num_train), split(num_test)


@register_dataset("synthetic", img_size=32)
def synthetic(
    opts: LoaderOptions,
    *,
    shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    num_train: int = 512,
    num_test: int = 256,
    data_seed: int = 0,
    augment: bool = True,
) -> ResidentData:
    """Random class-template images of `shape` (C, H, W, square); crop (pad 4) + flip."""
    shape = tuple(shape)  # type: ignore[assignment]  # YAML gives lists
    if len(shape) != 3 or shape[1] != shape[2] or min(shape) < 1:
        raise UsageError(f"synthetic shape must be (C, H, W) with H == W >= 1, got {shape}")
    if num_classes < 1 or num_train < 1 or num_test < 1:
        raise UsageError(
            "synthetic needs num_classes, num_train, num_test >= 1, "
            f"got {num_classes}, {num_train}, {num_test}"
        )
    train, test = make_synthetic(shape, num_classes, num_train, num_test, data_seed)
    mean_std = ((SYNTHETIC_MEAN,) * shape[0], (SYNTHETIC_STD,) * shape[0])
    aug = Augmentation(pad=4, flip=True) if augment else None
    as_np = tuple((x.numpy(), y.numpy()) for x, y in (train, test))
    return ResidentData.from_numpy("synthetic", as_np[0], as_np[1], num_classes, mean_std, opts, aug)
