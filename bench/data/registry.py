"""Datasets by name, timm style: `register_dataset` adds a factory, `create_data` builds one."""

from __future__ import annotations

import bisect
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

import torch

from bench.data.base import Data, LoaderOptions, default_root
from bench.errors import UsageError

Factory = Callable[..., Data]
F = TypeVar("F", bound=Factory)

_FACTORIES: dict[str, Factory] = {}
DATASETS: list[str] = []
"""Registered dataset names, sorted; updated in place so importers see later registrations."""


@overload
def register_dataset(name: str, *, overwrite: bool = False) -> Callable[[F], F]: ...
@overload
def register_dataset(name: F, *, overwrite: bool = False) -> F: ...
def register_dataset(name: str | F, *, overwrite: bool = False) -> Callable[[F], F] | F:
    """Register `factory(opts: LoaderOptions, **dataset_kwargs) -> Data` under a name.

    Use as `@register_dataset("cifar10")`, or bare `@register_dataset` to take the function's name.
    """
    if callable(name):
        return register_dataset(name.__name__, overwrite=overwrite)(name)

    def add(factory: F) -> F:
        if name in _FACTORIES and not overwrite:
            raise ValueError(f"dataset {name!r} is already registered")
        if name not in _FACTORIES:
            bisect.insort(DATASETS, name)
        _FACTORIES[name] = factory
        return factory

    return add


def _check_kwargs(name: str, factory: Factory, kwargs: dict[str, Any]) -> None:
    params = list(inspect.signature(factory).parameters.values())[1:]  # after `opts`
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    allowed = [p.name for p in params]
    for key in kwargs:
        if key not in allowed:
            raise UsageError(
                f"dataset {name!r} has no option {key!r}; its options are: {', '.join(allowed) or 'none'}"
            )


def create_data(
    name: str,
    *,
    root: str | Path | None = None,
    batch_size: int,
    device: str | torch.device,
    seed: int,
    train_subset: int | None = None,
    download: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 4,
    eval_batch_size: int | None = None,
    channels_last: bool = False,
    label_noise: float = 0.0,
    val_size: int = 0,
    val_split_seed: int = 0,
    **kwargs: Any,
) -> Data:
    """Build dataset `name` for one rank; extra kwargs go to that dataset (e.g. synthetic's `shape`)."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if eval_batch_size is not None and eval_batch_size < 1:
        raise UsageError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    if seed < 0:
        raise UsageError(f"seed must be >= 0, got {seed}")
    if train_subset is not None and train_subset < 1:
        raise UsageError(f"train_subset must be >= 1, got {train_subset}")
    if not 0 <= label_noise < 1:
        raise UsageError(f"label_noise={label_noise} is invalid: allowed values lie in [0, 1)")
    if val_size < 0 or val_split_seed < 0:
        raise UsageError(f"val_size={val_size}, val_split_seed={val_split_seed} are invalid: allowed values are "
                         "integers >= 0")
    if num_workers < 0:
        raise UsageError(f"num_workers must be >= 0, got {num_workers}")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"bad device {device!r}: {e}") from None
    _check_kwargs(name, factory, kwargs)
    opts = LoaderOptions(
        root=Path(root).expanduser() if root is not None else default_root(),
        batch_size=batch_size,
        device=dev,
        seed=seed,
        train_subset=train_subset,
        download=download,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
        channels_last=channels_last,
        label_noise=label_noise,
        val_size=val_size,
        val_split_seed=val_split_seed,
    )
    data = factory(opts, **kwargs)
    if label_noise > 0 and not hasattr(data, "label_noise_flipped"):
        raise UsageError(f"label_noise is supported for the datasets held in memory, not {name!r}")
    if val_size > 0 and not hasattr(data, "val_batches"):
        raise UsageError(f"val_size is supported for the datasets held in memory, not {name!r}")
    return data
