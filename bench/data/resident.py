"""Small datasets held whole on the training device as uint8, batched and augmented there (airbench style).

The benchmark then times the optimizer, not a CPU loader: per step there is one gather, one
crop/flip gather and one normalisation, all on the device, and no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.data.augment import Normalize, crop_flip
from bench.data.base import LoaderOptions
from bench.data.sampling import epoch_generator, shard, steps_per_epoch
from bench.data.split import validation_split

LABEL_NOISE_SEED = 0  # one noisy training set for every seed and method, so runs stay paired by seed


def symmetric_label_noise(targets: np.ndarray, num_classes: int, p: float, seed: int = LABEL_NOISE_SEED
                          ) -> np.ndarray:
    """Each label, with probability p, replaced by one of the *other* classes drawn uniformly.

    Drawn for the whole training set at once, keyed by sample index, so a subset keeps its samples'
    noisy labels; the same (targets, p, seed) always give the same labels.
    """
    u = torch.rand(len(targets), 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    flip = u[:, 0] < p  # row i depends only on i: a prefix of the set gets the prefix of the draws
    shift = 1 + np.minimum((u[:, 1] * (num_classes - 1)).astype(np.int64), num_classes - 2)
    return np.where(flip, (targets.astype(np.int64) + shift) % num_classes, targets)


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: random crop after `pad` zero pixels, plus a horizontal flip if `flip`."""

    pad: int = 4
    flip: bool = True


@dataclass
class ResidentData:
    """A dataset living on `opts.device`; implements `bench.data.base.Data`."""

    name: str
    train_images: torch.Tensor  # (N, C, H, W) uint8 on the device
    train_targets: torch.Tensor  # (N,) int64 on the device
    test_images: torch.Tensor
    test_targets: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    opts: LoaderOptions
    augmentation: Augmentation | None = Augmentation()
    label_noise_flipped: int = 0  # training labels changed by symmetric label noise
    # Held-out training images (bench.data.split), labelled as the training images are: noisy under label noise.
    val_images: torch.Tensor | None = None
    val_targets: torch.Tensor | None = None
    _normalize: Normalize = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._normalize = Normalize(self.mean, self.std, self.opts.device)

    @classmethod
    def from_numpy(
        cls,
        name: str,
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        num_classes: int,
        mean_std: tuple[tuple[float, ...], tuple[float, ...]],
        opts: LoaderOptions,
        augmentation: Augmentation | None,
    ) -> ResidentData:
        """Keep the first `train_subset` training samples (after holding out `val_size` for validation) and
        move everything to the device once."""
        keep, held = validation_split(len(train[0]), opts.train_subset, opts.val_size, opts.val_split_seed)
        n = opts.subset_size(name, len(keep))  # the first n candidates train
        clean = np.asarray(train[1])
        # Drawn over the whole training set, keyed by index: validation labels are as noisy as training labels.
        labels = symmetric_label_noise(clean, num_classes, opts.label_noise) if opts.label_noise > 0 else clean
        keep = keep[:n]

        def put(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            # Copy so a subset does not keep the full host array alive through a shared view.
            return torch.from_numpy(np.array(a, copy=True)).to(device=opts.device, dtype=dtype)

        return cls(
            name=name,
            train_images=put(train[0][keep], torch.uint8),
            train_targets=put(labels[keep], torch.int64),
            test_images=put(test[0], torch.uint8),
            test_targets=put(test[1], torch.int64),
            num_classes=num_classes,
            mean=mean_std[0],
            std=mean_std[1],
            opts=opts,
            augmentation=augmentation,
            label_noise_flipped=int((labels[keep] != clean[keep]).sum()),
            val_images=put(train[0][held], torch.uint8) if len(held) else None,
            val_targets=put(labels[held], torch.int64) if len(held) else None,
        )

    @property
    def num_samples(self) -> int:
        return self.train_images.shape[0]

    @property
    def in_chans(self) -> int:
        return self.train_images.shape[1]

    @property
    def img_size(self) -> int:
        return self.train_images.shape[2]

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_samples, self.opts.batch_size, self.opts.world_size)

    @property
    def resident_bytes(self) -> int:
        tensors = (self.train_images, self.train_targets, self.test_images, self.test_targets, self.val_images,
                   self.val_targets)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(this rank's batches (steps, B), crop offsets (N, 2), flips (N,)) for `epoch`, on the device.

        Drawn once per epoch on a CPU generator seeded by (seed, epoch) and keyed by true sample
        index, so every rank agrees on the permutation and a sample's augmentation does not
        depend on which rank or step it lands in.
        """
        g = epoch_generator(self.opts.seed, epoch)
        n = self.num_samples
        perm = torch.randperm(n, generator=g)
        pad = self.augmentation.pad if self.augmentation else 0
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
        flips = torch.randint(0, 2, (n,), generator=g, dtype=torch.bool)
        batches = shard(perm, self.opts.batch_size, self.opts.rank, self.opts.world_size)
        dev = self.opts.device
        return batches.to(dev), offsets.to(dev), flips.to(dev)

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        batches, offsets, flips = self.epoch_plan(epoch)
        aug = self.augmentation
        for idx in batches:
            x = self.train_images[idx]
            if aug is not None:
                x = crop_flip(x, offsets[idx], flips[idx] if aug.flip else None, aug.pad)
            yield idx, self._normalize(x, self.opts.channels_last), self.train_targets[idx]

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._eval_batches(self.test_images, self.test_targets)

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the validation images, in order, like `test_batches` (none without a split)."""
        if self.val_images is None or self.val_targets is None:
            return iter(())
        return self._eval_batches(self.val_images, self.val_targets)

    def _eval_batches(self, images: torch.Tensor, targets: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs, share = self.opts.test_batch_size, slice(self.opts.rank, None, self.opts.world_size)
        images, targets = images[share], targets[share]  # strided views, no copy
        for start in range(0, images.shape[0], bs):
            yield self._normalize(images[start : start + bs], self.opts.channels_last), targets[start : start + bs]
