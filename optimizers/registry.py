"""Method names -> classes, as timm's registry does for models: a grid names methods as plain data.

Each class carries its `MethodSpec`; everything else (config keys, CLI flags, grid keys) reads the specs here.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .base import Method
from .spec import HParam, MethodSpec

_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Register `cls` under `cls.spec.name`; its spec must describe its constructor's keywords."""
    spec = cls.spec
    if spec.name != cls.name:
        raise ValueError(f"{cls.__name__}.spec.name={spec.name!r} differs from {cls.__name__}.name={cls.name!r}")
    keywords = _keywords(cls)
    missing = [h.name for h in spec.hparams if h.name not in keywords]
    if missing:
        raise ValueError(f"{cls.__name__} declares {missing[0]!r} in its spec but its constructor does not take it")
    _REGISTRY[spec.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method (tests register toy methods and take them away again)."""
    _REGISTRY.pop(name, None)


def _keywords(cls: type[Method]) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= {p.name for p in inspect.signature(klass.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}
    return names


def methods() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_REGISTRY)


def method_class(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise ValueError(f"method {name!r} is unknown: allowed methods are {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_spec(name: str) -> MethodSpec:
    return method_class(name).spec


def method_hparams(name: str) -> dict[str, Any]:
    """The method's own hyperparameters and their defaults (not the shared ones like precision)."""
    return method_spec(name).defaults


def all_hparams() -> dict[str, HParam]:
    """Every registered method's hyperparameters by name; a name shared by methods has one meaning and type."""
    out: dict[str, HParam] = {}
    for cls in _REGISTRY.values():
        for h in cls.spec.hparams:
            if h.name in out and out[h.name].type is not h.type:
                raise ValueError(f"hyperparameter {h.name!r} has two types: {out[h.name].type} and {h.type}")
            out.setdefault(h.name, h)
    return out


def create(name: str, model: nn.Module, base_optimizer: torch.optim.Optimizer, **hparams: Any) -> Method:
    """Build method `name` around `model` and `base_optimizer`; unknown hyperparameters are errors."""
    cls = method_class(name)
    shared = {p for p in inspect.signature(Method.__init__).parameters if p not in ("self", "model", "base_optimizer")}
    allowed = _keywords(cls) | shared
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ValueError(f"hyperparameter {unknown[0]!r} is invalid for method {name!r}: "
                         f"allowed are {', '.join(sorted(allowed))}")
    return cls(model, base_optimizer, **hparams)
