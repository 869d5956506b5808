"""Per-dataset normalisation constants (per-channel mean and std of the training set, in [0, 1] units)."""

from __future__ import annotations

MeanStd = tuple[tuple[float, ...], tuple[float, ...]]

# Population statistics of each training set (CIFAR std is the true pixel std, not the often-quoted 0.20).
CIFAR10_MEAN_STD: MeanStd = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_MEAN_STD: MeanStd = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
FASHIONMNIST_MEAN_STD: MeanStd = ((0.2860,), (0.3530,))
IMAGENET_MEAN_STD: MeanStd = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

MEAN_STD: dict[str, MeanStd] = {
    "cifar10": CIFAR10_MEAN_STD,
    "cifar100": CIFAR100_MEAN_STD,
    "fashionmnist": FASHIONMNIST_MEAN_STD,
    "imagenet": IMAGENET_MEAN_STD,
}
