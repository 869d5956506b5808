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

from .base import Method
from .spec import HParam, MethodSpec, Search
from .store import LogitStore
from .trajectory import trajectory_loss

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_STORE_DTYPE = "float16"  # changes the trajectory loss by < 1e-3 relative (safbench overhead --store-report)


def check_store_size(method: str, num_samples: int | None, num_classes: int | None) -> None:
    """Every per-sample logit store design (ours and the official one) needs the dataset's size."""
    if num_samples is None or num_classes is None or num_samples < 1 or num_classes < 1:
        raise ValueError(f"{method} needs num_samples and num_classes >= 1 to size its store "
                         f"(got num_samples={num_samples!r}, num_classes={num_classes!r})")


TAU = HParam("tau", float, 5.0, "temperature tau of the trajectory loss's softmaxes",
             source="SAF paper, Sec. 5 (all experiments)", low=0.0, low_open=True)
E_START = HParam("e_start", int, 5, "first epoch (0-based) of the trajectory loss: the paper's 1-based "
                 "e > E_start; the official code's --kl_start_epoch k is e_start = k + 1",
                 source="SAF paper, Sec. 5 (CIFAR)", low=0, search=Search(1, 10))
SPEC = MethodSpec(
    name="saf", paper="Du et al., NeurIPS 2022", needs_indices=True,
    summary="CE + lam tau^2 KL(softmax(z_old/tau) ‖ softmax(z/tau)), z_old = the sample's own logits from e_tilde "
            "epochs ago, from a per-sample store on the device, sharded and consistent under DDP",
    hparams=(HParam("lam", float, 0.3, "weight lambda of the trajectory loss", source="SAF paper, Sec. 5 (CIFAR)",
                    low=0.0, search=Search(0.05, 1.0, scale="log")),
             TAU,
             HParam("e_tilde", int, 3, "E~: the store returns each sample's logits from this many epochs ago",
                    source="SAF paper, Sec. 5 (CIFAR)", low=1, search=Search(1, 5)),
             E_START,
             HParam("store_dtype", str, DEFAULT_STORE_DTYPE, "dtype of the per-sample logit store",
                    source="ours: fp16 changes the loss by < 1e-3 relative (safbench overhead --store-report)",
                    choices=tuple(_DTYPES))),
    active_from=lambda hp: max(int(hp["e_start"]), int(hp["e_tilde"])))


class SAF(Method):
    name = "saf"
    spec = SPEC

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, *,
                 num_samples: int | None = None, num_classes: int | None = None, lam: float = SPEC.defaults["lam"],
                 tau: float = TAU.default, e_tilde: int = SPEC.defaults["e_tilde"], e_start: int = E_START.default,
                 store_dtype: str = DEFAULT_STORE_DTYPE, store_device: str | torch.device | None = None,
                 process_group: Any = None, **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
        check_store_size(self.name, num_samples, num_classes)
        hp = SPEC.check({"lam": lam, "tau": tau, "e_tilde": e_tilde, "e_start": e_start, "store_dtype": store_dtype})
        self.lam, self.tau, self.e_tilde, self.e_start = hp["lam"], hp["tau"], hp["e_tilde"], hp["e_start"]
        self.store = LogitStore(num_samples, num_classes, self.e_tilde, dtype=_DTYPES[store_dtype],
                                device=store_device or self.device, process_group=process_group)
        self._checked_epoch = -1
        self._pending: tuple[Tensor, Tensor] | None = None

    @property
    def active(self) -> bool:
        return self.epoch >= SPEC.active_from({"e_start": self.e_start, "e_tilde": self.e_tilde})

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

    def extra_state(self) -> dict[str, list[Tensor]]:
        return {"store": [self.store.table, self.store.written]}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["store"] = self.store.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.store.load_state_dict(state["store"])
