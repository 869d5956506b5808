"""Method names -> classes, as timm's registry does for models: a grid names methods as plain data."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise ValueError(f"method {name!r} is unknown: allowed methods are {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_hparams(name: str) -> dict[str, Any]:
    """The method's own hyperparameters and their defaults (not the shared ones like precision)."""
    cls = method_class(name)
    own: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is Method or not issubclass(klass, Method) or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in own:
                own[p.name] = p.default
    return own


def create(name: str, model: nn.Module, base_optimizer: torch.optim.Optimizer, **hparams: Any) -> Method:
    """Build method `name` around `model` and `base_optimizer`; unknown hyperparameters are errors."""
    cls = method_class(name)
    shared = {p for p in inspect.signature(Method.__init__).parameters if p not in ("self", "model", "base_optimizer")}
    allowed = set(method_hparams(name)) | shared
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ValueError(f"hyperparameter {unknown[0]!r} is invalid for method {name!r}: "
                         f"allowed are {', '.join(sorted(allowed))}")
    return cls(model, base_optimizer, **hparams)
