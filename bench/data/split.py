"""The validation split: which training images are held out, the same for every method and run seed.

The held-out images are drawn by a split seed of their own (never the run seed), so every method and seed
of a workload validates on the same images. Where the training set is a prefix (`train_subset`), they are
drawn from the images after it, and the training set is unchanged; without a `train_subset` they are drawn
from the whole training set, and training uses the rest.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.errors import UsageError


def validation_split(available: int, train_subset: int | None, val_size: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(training candidates, validation indices) into a training set of `available` images, both sorted; training
    keeps the first `train_subset` candidates (LoaderOptions.subset_size checks that they suffice)."""
    if val_size == 0:  # the caller checks that a train_subset fits (LoaderOptions.subset_size)
        return np.arange(available), np.arange(0)
    if val_size >= available:
        raise UsageError(f"val_size={val_size} leaves no training images: the training set has {available}")
    g = torch.Generator().manual_seed(seed)
    if train_subset is not None:
        if available - train_subset < val_size:
            raise UsageError(f"train_subset={train_subset} with val_size={val_size} needs {train_subset + val_size} "
                             f"training images; the dataset has {available}")
        rest = train_subset + torch.randperm(available - train_subset, generator=g)[:val_size].numpy()
        return np.arange(train_subset), np.sort(rest)
    held = np.zeros(available, dtype=bool)
    held[torch.randperm(available, generator=g)[:val_size].numpy()] = True
    return np.flatnonzero(~held), np.flatnonzero(held)
