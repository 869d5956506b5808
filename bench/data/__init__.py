"""Datasets by name: `create_data("cifar10", batch_size=..., device=..., seed=...)`.

Small sets (cifar10, cifar100, fashionmnist, synthetic) live on the training device as uint8 and
are augmented there; imagenet streams through DataLoader workers. Both give the same `Data`
interface: `train_batches(epoch)` yields (true indices, images, targets) for this rank. A file that
does not decode mid-run raises `BadDataFile` naming it; `bench.data.check` reads every file beforehand.
"""

from bench.data import cifar, fashionmnist, imagenet, synthetic  # noqa: F401  (register datasets)
from bench.data.base import Data, LoaderOptions, default_root
from bench.data.registry import DATASETS, IMAGE_SIZES, create_data, register_dataset
from bench.data.stats import MEAN_STD

__all__ = ["DATASETS", "IMAGE_SIZES", "MEAN_STD", "Data", "LoaderOptions", "create_data", "default_root",
           "register_dataset"]
