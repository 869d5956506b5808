"""What one overhead measurement is: a model, a data shape and batch, and the methods timed on it."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from optimizers import Method

from ..errors import UsageError
from ..models import create_model
from .batches import SHAPES, DataShape
from .methods import METHODS, REFERENCE, build_method, optimizer_for

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class OverheadConfig:
    """One model and batch shape; every listed method is timed on it in the same rounds."""

    model: str
    device: torch.device = torch.device("cpu")
    shape: str = "cifar10"
    methods: tuple[str, ...] = METHODS
    batch_size: int = 64
    precision: str = "fp32"
    steps: int = 3  # steps per timed block
    repeats: int = 10  # rounds
    warmup: int = 2  # untimed steps per method before the first round
    num_samples: int | None = None  # SAF's dataset size; None: the shape's (CIFAR 50,000; ImageNet 1,281,167)
    seed: int = 0
    channels_last: bool = False
    compile: bool = False
    optimizer: str = "auto"  # auto: AdamW for ViTs, SGD otherwise

    def validate(self, *, reference: bool = True) -> None:
        """UsageError naming the first bad value; `reference`: the methods must include SGD."""
        if self.shape not in SHAPES:
            raise UsageError(f"shape={self.shape!r} is invalid: allowed shapes are {', '.join(SHAPES)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise UsageError(f"method {unknown[0]!r} is unknown: allowed methods are {', '.join(METHODS)}")
        if reference and REFERENCE not in self.methods:
            raise UsageError(f"methods must include {REFERENCE!r}: every ratio is taken against it")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision={self.precision!r} is invalid: "
                             f"allowed values are {', '.join(PRECISIONS)}")
        if self.optimizer not in ("auto", "sgd", "adamw"):
            raise UsageError(f"optimizer={self.optimizer!r} is invalid: allowed values are auto, sgd, adamw")
        for name, low in (("batch_size", 1), ("steps", 1), ("repeats", 1), ("warmup", 0)):
            if getattr(self, name) < low:
                raise UsageError(f"{name}={getattr(self, name)} is invalid: "
                                 f"allowed values are integers >= {low}")
        if self.num_samples is not None and self.num_samples < self.batch_size:
            raise UsageError(f"num_samples={self.num_samples} is invalid: allowed values are >= the batch "
                             f"size ({self.batch_size})")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("device='cuda' is invalid here: no CUDA device is visible; allowed: cpu")

    @property
    def data_shape(self) -> DataShape:
        return SHAPES[self.shape]

    @property
    def base_optimizer(self) -> str:
        return optimizer_for(self.model) if self.optimizer == "auto" else self.optimizer

    def initial_model(self) -> nn.Module:
        """The model every method starts from: seeded, on the device, channels_last if asked."""
        shape = self.data_shape
        torch.manual_seed(self.seed)
        net = create_model(self.model, num_classes=shape.num_classes, in_chans=shape.image[0],
                           img_size=shape.image[1]).to(self.device)
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def build(self, name: str, net: nn.Module, *, num_samples: int) -> Method:
        """Method `name` around its own copy of `net` (compiled if asked), with this config's optimizer."""
        model = copy.deepcopy(net)
        return build_method(name, torch.compile(model) if self.compile else model, optimizer=self.base_optimizer,
                            num_samples=num_samples, num_classes=self.data_shape.num_classes,
                            precision=self.precision)
