"""CPU-sized models: `cnn_small` for real-data runs on 2 cores, `mlp_tiny` for tests.

`cnn_small` is three conv3x3-BN-ReLU-maxpool stages (32/64/128 channels by default), global average
pooling and a linear layer: 94,186 parameters for 1x28x28 and 10 classes, 7.4M multiply-adds per image.
Its step costs on 2 CPU cores are in results/overhead/steps-cpu-20261124T173325Z.csv.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.errors import UsageError
from bench.models._init import init_weights
from bench.models._registry import register_model


def conv_bn_pool(in_planes: int, planes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 3, padding=1, bias=False),
        nn.BatchNorm2d(planes),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),  # ceil_mode: odd sizes (7x7) keep their border
    )


class SmallCNN(nn.Module):
    def __init__(self, *, num_classes: int, in_chans: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_pool(in_chans, width), conv_bn_pool(width, 2 * width), conv_bn_pool(2 * width, 4 * width)
        )
        self.fc = nn.Linear(4 * width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class TinyMLP(nn.Module):
    """Flatten -> Linear -> ReLU -> Linear; its input size is fixed by `in_chans` and `img_size`."""

    def __init__(self, *, num_classes: int, in_features: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError(f"{name}={value!r} is invalid: allowed values are integers >= 1")


@register_model
def cnn_small(*, num_classes: int, in_chans: int = 3, img_size: int = 32, width: int = 32) -> nn.Module:
    """Three conv-BN-ReLU-pool stages of width/2w/4w channels (~0.1M parameters at width 32), any size."""
    _check_positive("width", width)
    return SmallCNN(num_classes=num_classes, in_chans=in_chans, width=width)


@register_model
def mlp_tiny(*, num_classes: int, in_chans: int = 3, img_size: int = 32, hidden: int = 32) -> nn.Module:
    """One hidden layer of `hidden` units on the flattened in_chans x img_size x img_size image."""
    _check_positive("hidden", hidden)
    return TinyMLP(num_classes=num_classes, in_features=in_chans * img_size * img_size, hidden=hidden)
