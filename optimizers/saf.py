"""SAF: Sharpness-Aware training for Free (Du et al., NeurIPS 2022).

    loss = CE(z, y) + lam * tau^2 * mean_i KL(softmax(z_old_i / tau) || softmax(z_i / tau))

z_old_i are the clean logits sample i got in its own training pass e_tilde epochs earlier, kept
in a per-sample store. One forward-backward per step: the sharpness term costs a store lookup.
Active from epoch max(e_start, e_tilde); before that the step is exactly SGD's, but the store is
filled from the first epoch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Method, check_range
from .store import LogitStore
from .trajectory import trajectory_loss

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_STORE_DTYPE = "float16"  # changes the trajectory loss by < 1e-3 relative (safbench overhead --store-report)


def check_trajectory_hparams(lam: float, tau: float, e_start: int) -> None:
    check_range("lam", lam, 0.0, float("inf"), low_open=False, high_open=True)
    check_range("tau", tau, 0.0, float("inf"), low_open=True, high_open=True)
    if int(e_start) != e_start or e_start < 0:
        raise ValueError(f"e_start={e_start!r} is invalid: allowed values are integers >= 0")


def check_store_hparams(method: str, num_samples: int | None, num_classes: int | None, lam: float, tau: float,
                        e_tilde: int, e_start: int) -> None:
    """The checks of every per-sample logit store design (ours and the official one)."""
    if num_samples is None or num_classes is None or num_samples < 1 or num_classes < 1:
        raise ValueError(f"{method} needs num_samples and num_classes >= 1 to size its store "
                         f"(got num_samples={num_samples!r}, num_classes={num_classes!r})")
    check_trajectory_hparams(lam, tau, e_start)
    if int(e_tilde) != e_tilde or e_tilde < 1:
        raise ValueError(f"e_tilde={e_tilde!r} is invalid: allowed values are integers >= 1")


class SAF(Method):
    name = "saf"

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, *,
                 num_samples: int | None = None, num_classes: int | None = None, lam: float = 0.3,
                 tau: float = 5.0, e_tilde: int = 3, e_start: int = 5, store_dtype: str = DEFAULT_STORE_DTYPE,
                 store_device: str | torch.device | None = None, process_group: Any = None,
                 **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
        check_store_hparams(self.name, num_samples, num_classes, lam, tau, e_tilde, e_start)
        if store_dtype not in _DTYPES:
            raise ValueError(f"store_dtype={store_dtype!r} is invalid: allowed values are {', '.join(_DTYPES)}")
        self.lam, self.tau = float(lam), float(tau)
        self.e_tilde, self.e_start = int(e_tilde), int(e_start)
        self.store = LogitStore(num_samples, num_classes, self.e_tilde, dtype=_DTYPES[store_dtype],
                                device=store_device or self.device, process_group=process_group)
        self._checked_epoch = -1
        self._pending: tuple[Tensor, Tensor] | None = None

    @property
    def active(self) -> bool:
        return self.epoch >= max(self.e_start, self.e_tilde)

    def regularizer(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor | None) -> Tensor | float:
        if indices is None:
            raise ValueError("saf needs each sample's dataset index: call step(inputs, targets, indices)")
        self._check_indices(indices)
        self._pending = (indices, logits.detach())  # stored after the step, and only if it was taken
        if not self.active:
            return 0.0
        old, present = self.store.read(self.epoch, indices)
        if old.device != logits.device:  # a host-side store (store_device="cpu") beside a CUDA model
            old, present = old.to(logits.device), present.to(logits.device)
        # Samples with no logits from epoch e - e_tilde (skipped by the sampler or an fp16-skipped
        # step) add nothing; the mean stays over the whole batch, as in the paper.
        return self.lam * trajectory_loss(logits, old, self.tau, weights=present)

    def after_step(self, stepped: bool | None) -> None:
        indices, logits = self._pending
        self._pending = None
        if stepped is not False:
            self.store.write(self.epoch, indices, logits)

    def _check_indices(self, indices: Tensor) -> None:
        # Host indices are checked every step (free); device indices once per epoch (one sync).
        if indices.device.type != "cpu" and self._checked_epoch == self.epoch:
            return
        self._checked_epoch = self.epoch
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= self.store.num_samples:
            bad = low if low < 0 else high
            raise ValueError(f"index {bad} is invalid: allowed sample indices lie in "
                             f"[0, {self.store.num_samples}) (num_samples={self.store.num_samples})")

    def extra_metrics(self) -> dict[str, float]:
        return {"saf_store_bytes": float(self.store.nbytes)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["store"] = self.store.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.store.load_state_dict(state["store"])
