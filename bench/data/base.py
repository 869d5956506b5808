"""What every dataset hands the training loop, and the options every loader shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from bench.errors import UsageError

ENV_ROOT = "SAFBENCH_DATA"
"""Environment variable naming the default dataset folder (used when `root` is None)."""


def default_root() -> Path:
    """`$SAFBENCH_DATA`, else `~/.cache/safbench/data`: one stable place regardless of the cwd."""
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "safbench" / "data"


@dataclass(frozen=True)
class LoaderOptions:
    """Options common to all datasets, validated once in `create_data`; loaders trust them."""

    root: Path
    batch_size: int
    device: torch.device
    seed: int
    train_subset: int | None = None
    download: bool = False
    rank: int = 0
    world_size: int = 1
    num_workers: int = 4
    eval_batch_size: int | None = None
    channels_last: bool = False
    label_noise: float = 0.0
    val_size: int = 0  # training images held out as a validation set (bench.data.split)
    val_split_seed: int = 0

    @property
    def test_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size

    def subset_size(self, name: str, available: int) -> int:
        """Training samples kept: the first `train_subset` (so kept indices are the true indices)."""
        n = available if self.train_subset is None else self.train_subset
        if n > available:
            raise UsageError(f"train_subset={n} is larger than {name}'s {available} training samples")
        need = self.batch_size * self.world_size
        if n < need:
            what = f"train_subset={n}" if self.train_subset is not None else f"{name} has only {n} samples,"
            if self.val_size:
                what += f" (after holding out val_size={self.val_size})"
            raise UsageError(
                f"{what} fewer than batch_size*world_size={self.batch_size}*{self.world_size}={need}; "
                "use a smaller batch or more samples"
            )
        return n


class Data(Protocol):
    """The dataset interface the run loop sees (resident or streaming alike)."""

    name: str
    num_samples: int
    num_classes: int
    in_chans: int
    img_size: int

    @property
    def steps_per_epoch(self) -> int: ...

    @property
    def resident_bytes(self) -> int: ...

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This rank's shard: (true indices int64, normalised float32 NCHW images, int64 targets)."""
        ...

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the test set (samples i with i % world == rank), in order, no augmentation,
        last batch kept: the ranks' shares are disjoint and cover the set, so summed counts are exact."""
        ...
