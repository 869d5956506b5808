"""The step protocol every method implements, and the plumbing they share.

A method owns a whole training step (forward(s), backward(s), the base optimizer's step) because
SAM needs two passes, ESAM per-sample losses, SAF sample indices and a store, MESA an EMA model.
Mixed precision, BatchNorm handling in perturbed passes and DDP live here, once.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .spec import MethodSpec, check_range

PRECISIONS = ("fp32", "bf16", "fp16")
BN_UPDATES = ("clean", "both")


@dataclass(frozen=True)
class StepOutput:
    """What a step returns; both tensors are detached and stay on the model's device (no host sync)."""

    loss: Tensor  # mean cross-entropy of the clean pass at the weights before the update
    logits: Tensor  # the clean pass's logits, [B, C]


def loss_precision(t: Tensor) -> Tensor:
    """`t` in the dtype losses are computed in: float32 for half precisions, float64 kept as float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


class Method:
    """Base class: a single clean forward-backward and a base-optimizer step (plain SGD semantics).

    Subclasses override `step` (two-pass methods) or `regularizer` (single-pass trajectory losses).
    """

    name: ClassVar[str] = "sgd"
    spec: ClassVar[MethodSpec]

    def __init__(
        self,
        model: nn.Module,
        base_optimizer: torch.optim.Optimizer,
        *,
        label_smoothing: float = 0.0,
        precision: str = "fp32",
        bn_update: str = "clean",
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise ValueError(f"base_optimizer={type(base_optimizer).__name__} is invalid: "
                             "allowed values are torch.optim.Optimizer instances")
        check_range("label_smoothing", label_smoothing, 0.0, 1.0, low_open=False, high_open=True)
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is invalid: allowed values are {', '.join(PRECISIONS)}")
        if bn_update not in BN_UPDATES:
            raise ValueError(f"bn_update={bn_update!r} is invalid: allowed values are {', '.join(BN_UPDATES)}")
        self.model = model
        self.base_optimizer = base_optimizer
        self.label_smoothing = label_smoothing
        self.precision = precision
        self.bn_update = bn_update
        self.epoch = 0
        self.device = next(unwrap(model).parameters()).device
        if precision == "fp16" and grad_scaler is None:
            grad_scaler = torch.amp.GradScaler(self.device.type)
        self.scaler = grad_scaler if precision == "fp16" else None

    # ---- public protocol -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Call once per epoch, 0-based, before the epoch's first step."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} is invalid: allowed values are integers >= 0")
        self.epoch = int(epoch)

    def step(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> StepOutput:
        self.base_optimizer.zero_grad(set_to_none=True)
        logits = self.forward(inputs)
        loss = self.criterion(logits, targets)
        total = loss + self.regularizer(logits, inputs, targets, indices)
        self.backward(total)
        stepped = self.optimizer_step()
        self.after_step(stepped)
        return StepOutput(loss.detach(), logits.detach())

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"method": self.name, "epoch": self.epoch,
                                 "base_optimizer": self.base_optimizer.state_dict()}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.name:
            raise ValueError(f"state_dict is for method {state.get('method')!r}, not {self.name!r}")
        self.epoch = int(state["epoch"])
        self.base_optimizer.load_state_dict(state["base_optimizer"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])

    def extra_metrics(self) -> dict[str, float]:
        """Method-specific numbers worth logging per epoch (store bytes, selected fraction...)."""
        return {}

    def watch_samples(self, flagged: Tensor) -> None:
        """The run marks some training samples (label noise: the flipped ones; a bool per dataset index, on the
        device) so that a method choosing samples can report how many of its choices were marked. Default: unused."""
        self.flagged = flagged

    def extra_state(self) -> dict[str, list[Tensor]]:
        """Tensors kept between steps beyond the model, its gradients and the base optimizer's state, by
        what they are (SAF: "store", MESA: "ema", LookSAM: "g_v"): memory accounting reads them here."""
        return {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base_optimizer.param_groups

    # ---- hooks for subclasses --------------------------------------------------------------
    def regularizer(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor | None) -> Tensor | float:
        """Extra loss added to the clean pass's cross-entropy; 0 for plain SGD."""
        return 0.0

    def after_step(self, stepped: bool | None) -> None:
        """Runs after the base step; `stepped` is False when fp16 skipped the step (None: not known)."""

    # ---- shared plumbing -------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def forward(self, inputs: Tensor, model: nn.Module | None = None) -> Tensor:
        with self.autocast():
            return (model or self.model)(inputs)

    def criterion(self, logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        # Half-precision logits in fp32 (log-softmax of bf16 logits loses the small terms); a float64 model's
        # loss stays float64, or its gradients would carry fp32 rounding.
        return F.cross_entropy(loss_precision(logits), targets, label_smoothing=self.label_smoothing,
                               reduction=reduction)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self) -> bool | None:
        """Base step; under fp16 the scaler skips it on inf/nan and returns False then."""
        if self.scaler is None:
            self.base_optimizer.step()
            return None
        scale_before = self.scaler.get_scale()
        self.scaler.step(self.base_optimizer)
        self.scaler.update()
        return not self.scaler.get_scale() < scale_before  # the scale only shrinks on inf/nan

    def trainable_params(self) -> list[nn.Parameter]:
        return [p for group in self.base_optimizer.param_groups for p in group["params"] if p.requires_grad]

    def perturbed_pass(self) -> contextlib.AbstractContextManager:
        """Context of a pass at perturbed weights: BN running stats frozen unless bn_update='both'."""
        return self.frozen_bn() if self.bn_update == "clean" else contextlib.nullcontext()

    @contextlib.contextmanager
    def frozen_bn(self) -> Iterator[None]:
        """BatchNorm layers keep using batch statistics in train mode but leave their buffers alone."""
        frozen = []
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.track_running_stats = False
                frozen.append(m)
        try:
            yield
        finally:
            for m in frozen:
                m.track_running_stats = True

    def no_sync(self) -> contextlib.AbstractContextManager:
        """DDP: the ascent pass stays local, so each worker perturbs with its own gradient (m-sharpness)."""
        sync_off = getattr(self.model, "no_sync", None)
        return sync_off() if callable(sync_off) else contextlib.nullcontext()

    def average_across_workers(self, tensors: list[Tensor]) -> None:
        """DDP: replace each tensor by its mean over the workers, in one all-reduce (for steps whose passes
        all ran under `no_sync`); a no-op without DDP."""
        if not tensors or not hasattr(self.model, "no_sync") or not (dist.is_available() and dist.is_initialized()):
            return
        group = getattr(self.model, "process_group", None)
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
        flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
        dist.all_reduce(flat, group=group)
        flat /= dist.get_world_size(group)
        with torch.no_grad():
            for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
                t.copy_(part.view_as(t))
