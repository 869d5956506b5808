"""Method names -> classes, as timm's registry does for models: a grid names methods as plain data.

Each class carries its `MethodSpec`; everything else (config keys, CLI flags, grid keys) reads the specs here.
Methods from other installed distributions join through the entry-point group `safbench.methods`
(`name = "package.module:MethodClass"`), loaded the first time the registry is asked for anything; from then
on they are registered exactly as the built-in ones. A plugin that fails to import, whose spec disagrees with
its constructor, or whose name is taken, raises `PluginError` (one line naming the plugin and entry point).
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn

from .base import Method
from .spec import HParam, MethodSpec

PLUGIN_GROUP = "safbench.methods"
# What a run offers every method; each goes only to the methods whose spec says they need it.
CONTEXT = {"needs_indices": ("num_samples", "num_classes"), "draws_random": ("seed",),
           "needs_lr_range": ("lr_max", "lr_min")}

_REGISTRY: dict[str, type[Method]] = {}
_ORIGINS: dict[str, dict[str, str]] = {}  # plugin method -> its distribution, version and entry point
_plugins = {"state": "unloaded"}  # unloaded -> loading -> loaded


class PluginError(ValueError):
    """An installed `safbench.methods` plugin cannot be used; the message is one line naming it."""


def _keywords(cls: type[Method]) -> dict[str, inspect.Parameter]:
    """The constructor's keyword-only parameters through the class hierarchy (a subclass's own first)."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind is p.KEYWORD_ONLY:
                    out.setdefault(p.name, p)
    return out


def spec_problems(cls: type) -> list[str]:
    """How `cls`'s spec disagrees with its constructor (empty when they agree)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        return [f"{cls!r} is not a subclass of optimizers.Method"]
    spec = getattr(cls, "spec", None)
    if not isinstance(spec, MethodSpec):
        return [f"{cls.__name__}.spec is not a MethodSpec"]
    problems = []
    if spec.name != cls.name:
        problems.append(f"{cls.__name__}.spec.name={spec.name!r} differs from {cls.__name__}.name={cls.name!r}")
    keywords = _keywords(cls)
    for h in spec.hparams:
        if h.name not in keywords:
            problems.append(f"{cls.__name__} declares {h.name!r} in its spec but its constructor does not take it")
        elif keywords[h.name].default is not inspect.Parameter.empty and keywords[h.name].default != h.default:
            problems.append(f"{cls.__name__}: the spec's default {h.name}={h.default!r} differs from the "
                            f"constructor's {keywords[h.name].default!r}")
        else:
            try:
                h.check(h.default)
            except ValueError as exc:
                problems.append(f"{cls.__name__}: the spec's default is refused by its own range: {exc}")
    for need, names in CONTEXT.items():
        for name in names:
            if getattr(spec, need) and name not in keywords:
                problems.append(f"{cls.__name__}.spec.{need} is set but its constructor takes no {name!r}")
    return problems


def register_method(cls: type[Method]) -> type[Method]:
    """Register `cls` under `cls.spec.name`; its spec must describe its constructor's keywords."""
    problems = spec_problems(cls)
    if problems:
        raise ValueError(problems[0])
    _REGISTRY[cls.spec.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method (tests register toy methods and take them away again)."""
    _REGISTRY.pop(name, None)
    _ORIGINS.pop(name, None)


def _load_plugins() -> None:
    """Register every `safbench.methods` entry point once, all or none: a broken plugin is an error, never a
    method that silently goes missing."""
    if _plugins["state"] != "unloaded":
        return
    _plugins["state"] = "loading"  # a plugin module importing optimizers must not recurse into this
    found: dict[str, type[Method]] = {}
    origins: dict[str, dict[str, str]] = {}
    try:
        for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
            dist = getattr(ep, "dist", None)
            origin = {"method_distribution": dist.metadata["Name"] if dist else "unknown",
                      "method_version": dist.version if dist else "unknown", "method_entry_point": ep.value}
            where = f"method plugin {ep.name!r} (entry point {ep.value!r} of {origin['method_distribution']})"
            try:
                cls = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's, named in one line
                raise PluginError(f"{where} failed to import: {type(exc).__name__}: {exc}") from None
            problems = spec_problems(cls)
            if problems:
                raise PluginError(f"{where}: {problems[0]}")
            if cls.spec.name != ep.name:
                raise PluginError(f"{where}: the entry point's name differs from its spec's name {cls.spec.name!r}")
            if ep.name in _REGISTRY or ep.name in found:
                raise PluginError(f"{where}: the name {ep.name!r} is already taken by "
                                  f"{(_REGISTRY.get(ep.name) or found[ep.name]).__module__}")
            found[ep.name], origins[ep.name] = cls, origin
        _check_shared_hparams([*_REGISTRY.values(), *found.values()], origins)
    except BaseException:
        _plugins["state"] = "unloaded"  # asked again, it fails again: the error is never swallowed
        raise
    _REGISTRY.update(found)
    _ORIGINS.update(origins)
    _plugins["state"] = "loaded"


def _check_shared_hparams(classes: list[type[Method]], origins: dict[str, dict[str, str]]) -> None:
    seen: dict[str, tuple[HParam, str]] = {}
    for cls in classes:
        for h in cls.spec.hparams:
            first = seen.setdefault(h.name, (h, cls.spec.name))
            if first[0].type is not h.type:
                plugin = cls.spec.name if cls.spec.name in origins else first[1]
                entry = origins.get(plugin, {}).get("method_entry_point", "?")
                raise PluginError(f"method plugin {plugin!r} (entry point {entry!r}) declares hyperparameter "
                                  f"{h.name!r} as {h.type.__name__}; method {first[1]!r} has it as "
                                  f"{first[0].type.__name__}: a flag has one type")


def methods() -> tuple[str, ...]:
    """Registered method names: the built-in ones in registration order, then plugins by name."""
    _load_plugins()
    return tuple(_REGISTRY)


def method_origin(name: str) -> dict[str, str]:
    """A plugin method's distribution, version and entry point (provenance); {} for a built-in method."""
    method_class(name)
    return dict(_ORIGINS.get(name, {}))


def method_class(name: str) -> type[Method]:
    _load_plugins()
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
    _load_plugins()
    out: dict[str, HParam] = {}
    for cls in _REGISTRY.values():
        for h in cls.spec.hparams:
            if h.name in out and out[h.name].type is not h.type:
                raise ValueError(f"hyperparameter {h.name!r} has two types: {out[h.name].type} and {h.type}")
            out.setdefault(h.name, h)
    return out


def create(name: str, model: nn.Module, base_optimizer: torch.optim.Optimizer, **hparams: Any) -> Method:
    """Build method `name` around `model` and `base_optimizer`; unknown hyperparameters are errors.

    The run context (`num_samples`, `num_classes`, `seed`, `lr_max`, `lr_min`) may be passed to every method:
    each reaches only a method whose spec needs it, so one loop can create every method with one call.
    """
    cls = method_class(name)
    spec = cls.spec
    for need, names in CONTEXT.items():
        if not getattr(spec, need):
            for key in names:
                hparams.pop(key, None)
    shared = {p for p in inspect.signature(Method.__init__).parameters if p not in ("self", "model", "base_optimizer")}
    allowed = set(_keywords(cls)) | shared
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ValueError(f"hyperparameter {unknown[0]!r} is invalid for method {name!r}: "
                         f"allowed are {', '.join(sorted(allowed))}")
    return cls(model, base_optimizer, **hparams)
