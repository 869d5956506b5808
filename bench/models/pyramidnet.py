"""PyramidNet (Han, Kim & Kim, CVPR 2017, arXiv:1610.02915) for CIFAR-sized inputs.

Channels grow by alpha/N at every one of the N residual units (16 -> 16 + alpha), not in steps at the
downsampling units. Units are BN-conv3x3-BN-ReLU-conv3x3-BN (basic) or BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-
conv1x1-BN with 4x expansion (bottleneck); shortcuts are parameter-free: 2x2 average pooling where the unit
downsamples, zero-padding for the extra channels. Depth d gives (d-2)/6 basic or (d-2)/9 bottleneck units
per stage.

`pyramidnet110` uses alpha=270 with basic units (28,485,477 parameters for 10 classes; the paper's Table 4
lists 28.3M, test error 3.73% CIFAR-10 / 18.25% CIFAR-100). Why: ESAM (Du et al., ICLR 2022) and SAF
(Du et al., NeurIPS 2022) report "PyramidNet-110" on CIFAR without stating alpha in the text, and the
official ESAM code (github.com/dydjw9/Efficient_SAM, utils/options.py, `setup_model`) builds it as
`PyramidNet(dataset, 110, 270, num_classes, False)`, i.e. depth 110, alpha 270, bottleneck False. The SAM
paper's PyramidNet-272 (alpha 200, bottleneck, ShakeDrop) is a different model and is not provided here.
Other settings are reachable through options, e.g. `alpha=48` (1.7M parameters) or `bottleneck=True`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UsageError
from bench.models._init import init_weights
from bench.models._registry import register_model


class PyramidShortcut(nn.Module):
    """Average-pool 2x2 where the unit downsamples, then zero-pad the channels the unit adds."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            # ceil_mode keeps the size equal to the strided 3x3 conv's on odd inputs (e.g. 7 -> 4)
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels)) if self.extra_channels else x


class PyramidBasic(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_planes),
            nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
            nn.BatchNorm2d(planes),
        )
        self.shortcut = PyramidShortcut(stride, planes - in_planes)

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class PyramidBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_planes),
            nn.Conv2d(in_planes, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
            nn.Conv2d(planes, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        )
        self.shortcut = PyramidShortcut(stride, out_planes - in_planes)

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


def pyramid_widths(depth: int, alpha: float, bottleneck: bool, base: int = 16) -> list[int]:
    """The inner width of each of the 3*n units: round(base + alpha * k / (3n)) for k = 1..3n."""
    per_block = 9 if bottleneck else 6
    if depth < 2 + per_block or (depth - 2) % per_block != 0:
        raise UsageError(
            f"PyramidNet depth={depth} is invalid: depth - 2 must be a multiple of {per_block} > 0"
        )
    total = 3 * (depth - 2) // per_block
    return [round(base + alpha * k / total) for k in range(1, total + 1)]


class PyramidNet(nn.Module):
    """Stem conv3x3-BN, 3 stages of pyramidal units (stride 2 into stages 2, 3), BN-ReLU, GAP, linear."""

    def __init__(
        self, depth: int, alpha: float, *, num_classes: int, in_chans: int = 3, bottleneck: bool = False
    ) -> None:
        super().__init__()
        block = PyramidBottleneck if bottleneck else PyramidBasic
        widths = pyramid_widths(depth, alpha, bottleneck)
        per_stage = len(widths) // 3
        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        units, in_planes = [], 16
        for k, planes in enumerate(widths):
            stride = 2 if k in (per_stage, 2 * per_stage) else 1
            units.append(block(in_planes, planes, stride))
            in_planes = planes * block.expansion
        self.units = nn.Sequential(*units)
        self.bn_final = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.units(self.bn1(self.conv1(x)))
        x = F.relu(self.bn_final(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def pyramidnet110(
    *, num_classes: int, in_chans: int = 3, img_size: int = 32, alpha: float = 270, bottleneck: bool = False
) -> nn.Module:
    """PyramidNet-110, alpha 270, basic units (ESAM/SAF CIFAR setup): 28.5M parameters for 10 classes."""
    if alpha < 0:
        raise UsageError(f"alpha={alpha!r} is invalid: allowed values are >= 0")
    return PyramidNet(110, alpha, num_classes=num_classes, in_chans=in_chans, bottleneck=bottleneck)
