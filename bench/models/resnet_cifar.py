"""CIFAR-style ResNets with BasicBlocks: a 3x3 stride-1 stem, no max-pool, global average pooling.

- `resnet18`: the ImageNet ResNet-18 stages [2, 2, 2, 2] with 64-512 channels and 1x1 projection
  shortcuts, as used on CIFAR by SAM/ESAM/SAF: 11,173,962 parameters for 10 classes.
- `resnet20`: He et al. 2016 (arXiv:1512.03385, Sec. 4.2): 3 stages of 3 blocks, 16/32/64 channels,
  parameter-free shortcuts (option A: subsample, zero-pad channels): 269,722 parameters for 10 classes
  (the paper's "0.27M"). Small enough for CPU runs on 1x28x28 Fashion-MNIST.
- `resnet14_s2`: the same family with 2 blocks per stage (6n+2, n=2; 172,218 parameters for 1x28x28 and
  10 classes) and a stride-2 stem, so a 28x28 image is seen at 14/7/4 instead of 28/14/7. An SGD step
  costs 0.27 ms per training sample on 2 CPU cores against 1.18 ms for resnet20
  (results/overhead/steps-cpu-20261124T173325Z.csv), which lets the 15-run real-data grid
  (grids/fashionmnist.yaml) finish in about an hour on 2 cores.

Global average pooling makes both accept any input size (28x28, 32x32, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models._init import init_weights
from bench.models._registry import register_model

Shortcut = Literal["conv", "pad"]


def conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Parameter-free shortcut (He et al.'s option A): keep every `stride`-th pixel, zero-pad new channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]  # same size as a padded 3x3 conv, odd sizes too
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (post-activation, He et al. 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "conv":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            else:
                self.shortcut = PadShortcut(stride, planes - in_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3x3-BN-ReLU, stages of BasicBlocks (stride 2 at each stage after the first), GAP, linear."""

    def __init__(
        self,
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        *,
        num_classes: int,
        in_chans: int = 3,
        shortcut: Shortcut = "conv",
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_chans, widths[0], stem_stride)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for i, (blocks, planes) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(in_planes, planes, 2 if i > 0 and j == 0 else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def resnet18(*, num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """CIFAR ResNet-18 (11.17M parameters for 10 classes); any input size."""
    return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes=num_classes, in_chans=in_chans)


@register_model
def resnet20(*, num_classes: int, in_chans: int = 3, img_size: int = 32, width: int = 16) -> nn.Module:
    """He et al.'s CIFAR ResNet-20 (0.27M parameters at width 16); `width` scales all three stages."""
    widths = [width, 2 * width, 4 * width]
    return CifarResNet([3, 3, 3], widths, num_classes=num_classes, in_chans=in_chans, shortcut="pad")


@register_model
def resnet14_s2(*, num_classes: int, in_chans: int = 3, img_size: int = 32, width: int = 16) -> nn.Module:
    """ResNet-14 (He et al.'s CIFAR family, 2 blocks per stage) with a stride-2 stem for cheap CPU runs."""
    widths = [width, 2 * width, 4 * width]
    return CifarResNet([2, 2, 2], widths, num_classes=num_classes, in_chans=in_chans, shortcut="pad", stem_stride=2)
