"""Name -> constructor registry for the benchmark's own networks (the pattern of timm's `_registry`).

A builder takes keyword-only `num_classes`, `in_chans`, `img_size` plus its own options, and returns a
freshly initialised `nn.Module`. Registering is import-time only, so the registry is plain data after that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

from torch import nn

Builder = Callable[..., nn.Module]

_BUILDERS: dict[str, Builder] = {}
MODELS: list[str] = []  # registered names, in registration order; updated in place by register_model


@overload
def register_model(name_or_fn: Builder) -> Builder: ...
@overload
def register_model(name_or_fn: str | None = None) -> Callable[[Builder], Builder]: ...


def register_model(name_or_fn: str | Builder | None = None) -> Builder | Callable[[Builder], Builder]:
    """Register a builder under its function name (`@register_model`) or another (`@register_model("x")`)."""

    def add(fn: Builder, name: str) -> Builder:
        if name in _BUILDERS or name.startswith("timm:"):
            raise ValueError(f"model name {name!r} is already taken (or reserved for timm)")
        _BUILDERS[name] = fn
        MODELS.append(name)
        return fn

    if callable(name_or_fn):
        return add(name_or_fn, name_or_fn.__name__)
    return lambda fn: add(fn, name_or_fn or fn.__name__)


def get_builder(name: str) -> Builder | None:
    """The builder registered under `name`, or None."""
    return _BUILDERS.get(name)
