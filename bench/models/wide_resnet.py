"""Wide ResNet (Zagoruyko & Komodakis 2016, arXiv:1605.07146), the pre-activation CIFAR variant.

WRN-d-k: a 3x3 stem to 16 channels, then 3 groups of (d-4)/6 blocks with 16k/32k/64k channels; each block is
BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 with a 1x1 projection shortcut where the shape changes; a final
BN-ReLU, global average pooling and a linear layer. WRN-28-10 has 36,479,194 parameters for 10 classes.
Dropout defaults to 0, as in the SAM/ESAM/SAF CIFAR setups.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UsageError
from bench.models._init import init_weights
from bench.models._registry import register_model


class WideBlock(nn.Module):
    """Pre-activation block; where the shape changes the projection sees the activated input, as in WRN."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = None
        if stride != 1 or in_planes != planes:
            self.projection = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        shortcut = x if self.projection is None else self.projection(act)
        out = self.dropout(F.relu(self.bn2(self.conv1(act))))
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-`depth`-`widen_factor`; global average pooling, so any input size works."""

    def __init__(
        self, depth: int, widen_factor: int, *, num_classes: int, in_chans: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth={depth} is invalid: depth - 4 must be a multiple of 6")
        blocks = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, 16, kernel_size=3, padding=1, bias=False)
        groups, in_planes = [], 16
        for i, planes in enumerate(widths):
            for j in range(blocks):
                groups.append(WideBlock(in_planes, planes, 2 if i > 0 and j == 0 else 1, dropout))
                in_planes = planes
        self.blocks = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def wrn28_10(*, num_classes: int, in_chans: int = 3, img_size: int = 32, dropout: float = 0.0) -> nn.Module:
    """WideResNet-28-10 (36.5M parameters for 10 classes); `dropout` between the convs of each block."""
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout={dropout!r} is invalid: allowed values lie in [0, 1)")
    return WideResNet(28, 10, num_classes=num_classes, in_chans=in_chans, dropout=dropout)
