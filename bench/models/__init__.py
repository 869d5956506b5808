"""Every network the benchmark trains, built by name: `create_model(name, num_classes=..., ...)`.

Registered CIFAR/CPU nets (see `MODELS`): resnet18, wrn28_10, pyramidnet110 (alpha 270), resnet20,
cnn_small, mlp_tiny, vit_p4_mini, vit_p4_tiny (patch-4 ViTs); and any timm model as `timm:<name>`. All are
freshly initialised from torch's global generator, so `torch.manual_seed` makes construction reproducible.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

from torch import nn

from bench.errors import UsageError
from bench.models import pyramidnet, resnet_cifar, small, vit, wide_resnet  # noqa: F401  (register the models)
from bench.models._registry import MODELS, get_builder, register_model
from bench.models.timm_models import PREFIX as TIMM_PREFIX
from bench.models.timm_models import create_timm_model

__all__ = ["MODELS", "count_parameters", "create_model", "register_model"]

_COMMON_ARGS = ("num_classes", "in_chans", "img_size")  # every builder takes these; the rest are its options


def create_model(
    name: str, *, num_classes: int, in_chans: int = 3, img_size: int = 32, **kwargs: Any
) -> nn.Module:
    """A freshly initialised model for inputs [B, in_chans, img_size, img_size] and `num_classes` logits.

    `name` is a registered name (`MODELS`) or `timm:<timm name>`; `kwargs` are the model's own options
    (e.g. `dropout` for wrn28_10, `alpha` for pyramidnet110, `width` for resnet20/cnn_small).
    Raises UsageError for an unknown name or option, or a non-positive size.
    """
    for arg, value in zip(_COMMON_ARGS, (num_classes, in_chans, img_size), strict=True):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise UsageError(f"{arg}={value!r} is invalid: allowed values are integers >= 1")
    num_classes, in_chans, img_size = int(num_classes), int(in_chans), int(img_size)  # e.g. numpy ints
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(
            name[len(TIMM_PREFIX) :], num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs
        )
    builder = get_builder(name)
    if builder is None:
        allowed = ", ".join(MODELS)
        raise UsageError(f"unknown model {name!r}: allowed are {allowed}, or timm:<name> for any timm model")
    options = [p for p in inspect.signature(builder).parameters if p not in _COMMON_ARGS]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        allowed = f"its options are {', '.join(options)}" if options else "it takes no options"
        raise UsageError(f"model {name!r} has no option {unknown[0]!r}: {allowed}")
    return builder(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
