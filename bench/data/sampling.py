"""Epoch order and per-rank sharding, shared by the resident and the streaming loaders.

Everything random here is a pure function of (seed, epoch): a resumed run at epoch e sees exactly
the order and augmentation an uninterrupted run would, and the global RNG is never touched.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed for (seed, *keys); unlike `seed + epoch`, (0, 1) and (1, 0) differ."""
    words = np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for epoch `epoch`; CPU so every device and every rank draws the same numbers."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch))


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Full batches each rank gets (drop_last): every rank the same count, so DDP never waits."""
    return num_samples // (batch_size * world_size)


def shard(perm: torch.Tensor, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's batches as a (steps, batch_size) tensor of sample indices.

    Like DistributedSampler(drop_last=True): drop the tail so all ranks have equal full batches,
    then take every world_size-th sample starting at rank, so shards are disjoint.
    """
    steps = steps_per_epoch(perm.numel(), batch_size, world_size)
    used = perm[: steps * batch_size * world_size]
    return used[rank::world_size].reshape(steps, batch_size)
