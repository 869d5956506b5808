"""The methods as the benchmarks build them, and the memory each keeps between steps.

Built from the optimizers' method specs (sample indices, seeds, lr ranges, active epochs, work cycles),
so a newly registered method is measured with no edit here; `saf_official` is the official SAF store
design, measured beside ours. What a method keeps beyond the model, its gradients and the base
optimizer's state it reports itself (`Method.extra_state`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

import optimizers
from optimizers import Method, unwrap

from ..config import RunConfig
from ..schedules import base_optimizer
from .official_saf import OfficialSAF

REFERENCE = "sgd"
# Every registered method, with the official SAF store design measured beside ours.
METHODS: tuple[str, ...] = tuple(x for m in optimizers.methods() for x in ((m, "saf_official") if m == "saf" else (m,)))


def optimizer_for(model_name: str) -> str:
    """The paper's base optimizer: AdamW for ViTs, SGD with momentum for convolutional nets."""
    return "adamw" if any(key in model_name.lower() for key in ("vit", "deit")) else "sgd"


def build_method(name: str, net: nn.Module, *, optimizer: str, num_samples: int, num_classes: int,
                 precision: str) -> Method:
    """Method `name` around `net` with the default hyperparameters; `saf_official` is the official store."""
    # The real runs' base optimizer construction (param groups, weight decay split); a small lr keeps
    # random-label training finite, and the lr does not change the cost of a step.
    lr = 1e-4 if optimizer == "adamw" else 1e-2
    wd = 0.05 if optimizer == "adamw" else 5e-4
    base = base_optimizer(RunConfig(optimizer=optimizer, lr=lr, weight_decay=wd), unwrap(net))
    common: dict[str, Any] = {"precision": precision}
    if name == OfficialSAF.name:
        return OfficialSAF(net, base, num_samples=num_samples, num_classes=num_classes, **common)
    spec = optimizers.method_spec(name)
    if spec.needs_indices:
        common.update(num_samples=num_samples, num_classes=num_classes)
    if spec.draws_random:
        common["seed"] = optimizers.method_seed(0, name)
    if spec.needs_lr_range:
        common.update(lr_max=lr, lr_min=lr)
    return optimizers.create(name, net, base, **common)


def _hparams(method: Method) -> dict[str, Any]:
    return {h.name: getattr(method, h.name, h.default) for h in method.spec.hparams}


def active_epoch(method: Method) -> int:
    """The first epoch at which the method does all of its work (SAF reads its store, MESA runs its EMA)."""
    return method.spec.active_from(_hparams(method))


def block_steps(method: Method, steps: int) -> int:
    """`steps` rounded up to whole cycles of the method's work (LookSAM: k), so every block costs the same."""
    cycle = method.spec.cycle(_hparams(method))
    return math.ceil(steps / cycle) * cycle


def _nbytes(tensors: list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def method_state_bytes(method: Method, device: torch.device) -> int:
    """Bytes on `device` the method keeps between steps: weights, buffers, grads, optimizer state and its
    extra state (SAF's store, MESA's EMA, LookSAM's g_v); a tensor shared by two of these counts once."""
    net = unwrap(method.model)

    def tensors() -> Iterator[Tensor]:
        yield from net.parameters()
        yield from net.buffers()
        yield from (p.grad for p in net.parameters() if p.grad is not None)
        for state in method.base_optimizer.state.values():
            yield from (v for v in state.values() if torch.is_tensor(v))
        for kept in method.extra_state().values():
            yield from kept

    seen: dict[int, int] = {}
    for t in tensors():
        if t.device.type == device.type and t.numel():
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def store_bytes(method: Method) -> int | None:
    """SAF's store (logits and written-epoch marks); None for a method without one."""
    store = method.extra_state().get("store")
    return None if store is None else _nbytes(store)


def ema_bytes(method: Method) -> int | None:
    """MESA's EMA model; None for a method without one."""
    ema = method.extra_state().get("ema")
    return None if ema is None else _nbytes(ema)


def store_location(method: Method) -> str | None:
    """Where the method's store lives and in what dtype; None for a method without one."""
    if isinstance(method, OfficialSAF):
        return "host (numpy float32, per rank)"
    store = method.extra_state().get("store")
    if not store:
        return None
    logits = store[0]  # the logits table comes first, its written-epoch marks after it
    return f"{logits.device.type} ({str(logits.dtype).removeprefix('torch.')})"
