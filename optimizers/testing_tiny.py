"""The tiny setup of the conformance check (optimizers.testing): a 6-12-4 MLP with BatchNorm on 24 samples in
batches of 8, SGD with momentum and weight decay, the lr falling linearly from LR to LR/10, each method at its
spec's defaults with the run context it declares, for two epochs past the one its spec says it becomes active.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .base import Method
from .registry import CONTEXT, create, method_class

N, BATCH, IN, HIDDEN, CLASSES = 24, 8, 6, 12, 4
LR = 0.05
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def tiny_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyNet().to(dtype)


def tiny_data(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, IN, generator=g).to(dtype), torch.randint(0, CLASSES, (N,), generator=g)


def plan(epochs: int) -> list[tuple[int, Tensor]]:
    """(epoch, sample indices) of every step: each epoch shuffled its own way."""
    steps = []
    for epoch in range(epochs):
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(100 + epoch))
        steps += [(epoch, perm[i:i + BATCH]) for i in range(0, N, BATCH)]
    return steps


def lr_at(step: int, total: int) -> float:
    return LR * (1.0 - 0.9 * step / max(1, total - 1))


def check_hparams(name: str, dtype: str = "float32") -> dict[str, Any]:
    """The spec's defaults, with a dtype-naming choice set to `dtype` where the method offers it."""
    hp = dict(method_class(name).spec.defaults)
    for h in method_class(name).spec.hparams:
        if h.type is str and h.choices and dtype in h.choices and set(h.choices) <= {*_DTYPES, "float16"}:
            hp[h.name] = dtype
    return hp


def context_kwargs(name: str, seed: int = 0) -> dict[str, Any]:
    spec = method_class(name).spec
    offered = {"num_samples": N, "num_classes": CLASSES, "seed": seed, "lr_max": LR, "lr_min": LR * 0.1}
    return {k: offered[k] for need, keys in CONTEXT.items() if getattr(spec, need) for k in keys}


def epochs_for(name: str) -> int:
    spec = method_class(name).spec
    return int(spec.active_from(spec.defaults)) + 2


class Trainer:
    """One method around a fresh tiny net: steps it along `plan`, with the lr schedule set before each step."""

    def __init__(self, name: str, *, dtype: str = "float32", precision: str = "fp32", seed: int = 0,
                 init_scale: float = 2.0**16) -> None:
        self.name, self.total = name, len(plan(epochs_for(name)))
        param_dtype = _DTYPES[dtype]
        self.model = tiny_net(seed, param_dtype)
        self.base = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        extra: dict[str, Any] = {"precision": precision}
        if precision == "fp16":
            extra["grad_scaler"] = torch.amp.GradScaler("cpu", init_scale=init_scale)
        self.kwargs = {**check_hparams(name, dtype), **context_kwargs(name, seed)}
        self.method: Method = create(name, self.model, self.base, **self.kwargs, **extra)
        self.x, self.y = tiny_data(param_dtype)
        self.done, self.epoch = 0, -1

    def step(self, epoch: int, idx: Tensor) -> Tensor:
        if epoch != self.epoch:
            self.method.set_epoch(epoch)
            self.epoch = epoch
        for group in self.base.param_groups:
            group["lr"] = lr_at(self.done, self.total)
        out = self.method.step(self.x[idx], self.y[idx], idx)
        self.done += 1
        return out.loss

    def run(self, steps: list[tuple[int, Tensor]]) -> list[Tensor]:
        """Weights and buffers after each step, flattened to one float64 vector each."""
        snapshots = []
        for epoch, idx in steps:
            self.step(epoch, idx)
            snapshots.append(flat(self.model))
        return snapshots


def flat(model: nn.Module) -> Tensor:
    """Parameters and buffers as one float64 vector."""
    return torch.cat([t.detach().double().reshape(-1) for t in model.state_dict().values()])


def weights(model: nn.Module) -> Tensor:
    """The parameters alone (a skipped fp16 step's clean pass still updates BatchNorm's buffers, as in torch)."""
    return torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves of a (nested) state_dict, by path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}{k}.")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), obj


def state_differences(a: dict, b: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """Paths at which two method state_dicts differ (bit for bit)."""
    left, right = dict(_tensors(a)), dict(_tensors(b))
    out = [k for k in sorted(set(left) ^ set(right)) if not k.startswith(skip)]
    for k in sorted(set(left) & set(right)):
        if k.startswith(skip):
            continue
        u, v = left[k], right[k]
        same = (torch.equal(u, v) if torch.is_tensor(u) and torch.is_tensor(v) and u.dtype == v.dtype
                else (not torch.is_tensor(u) and not torch.is_tensor(v) and u == v))
        if not same:
            out.append(k)
    return out
