"""The official SAF code's store design, rebuilt behind our step interface so its cost can be measured.

Not a training method to use: `safbench overhead` runs it as the row `saf_official`, beside our
`saf`, so the price of the design is shown rather than claimed. The algorithm is the same as
`optimizers.saf.SAF` (same loss, same slot rule, and our activation epoch, the paper's: the official
`SAF_train.py` tests the 0-based `epoch > kl_start_epoch`, so its `--kl_start_epoch k` is our
`e_start = k + 1`); only the store differs:

- every step the clean logits go GPU -> CPU -> numpy (`.cpu()` waits for the whole forward pass:
  a host synchronisation per step, so the CPU can no longer queue the next kernels ahead);
- the store is a host-side float32 numpy array of shape [N, e_tilde, C], one per rank (under DDP each
  rank fills its own copy; the official code uses a fixed 15M x 4 x 1000 array, we size it
  N x e_tilde x C so it fits the machines we measure on, and keep float32 and the host);
- old logits are gathered by numpy fancy indexing (a host copy) and sent back to the device.

Lives in `bench`, not `optimizers`: it is a measuring instrument, and `optimizers` stays free of numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from optimizers.base import Method
from optimizers.saf import SPEC as SAF_SPEC
from optimizers.saf import check_store_size
from optimizers.trajectory import trajectory_loss


class HostLogitStore:
    """A float32 numpy table [N, slots, C] on the host, read and written through numpy indexing."""

    def __init__(self, num_samples: int, num_classes: int, slots: int) -> None:
        self.num_samples, self.num_classes, self.slots = int(num_samples), int(num_classes), int(slots)
        self.table = np.zeros((self.num_samples, self.slots, self.num_classes), dtype=np.float32)
        # np.zeros only reserves address space; touching every page now measures the steady state
        # (after the first epoch every page has been written) instead of first-touch page faults.
        self.table.fill(0.0)

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes)

    def exchange(self, slot: int, indices: Tensor, logits: Tensor, *, read: bool) -> Tensor | None:
        """If `read`, the old logits of `indices` in `slot` (float32, on the logits' device); then store."""
        rows = indices.cpu().numpy()  # a device -> host copy: waits for everything queued before it
        current = logits.detach().float().cpu().numpy()
        old = None
        if read:
            # Fancy indexing copies the rows on the host, then they travel back to the device.
            old = torch.from_numpy(self.table[rows, slot]).to(logits.device)
        self.table[rows, slot] = current
        return old


class OfficialSAF(Method):
    """SAF with the official store design (see the module docstring); hyperparameters as SAF's."""

    name = "saf_official"
    # SAF's spec without store_dtype: the official store is host float32.
    spec = dataclasses.replace(SAF_SPEC, name="saf_official",
                               hparams=tuple(h for h in SAF_SPEC.hparams if h.name != "store_dtype"))

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, *,
                 num_samples: int | None = None, num_classes: int | None = None,
                 lam: float = SAF_SPEC.defaults["lam"], tau: float = SAF_SPEC.defaults["tau"],
                 e_tilde: int = SAF_SPEC.defaults["e_tilde"], e_start: int = SAF_SPEC.defaults["e_start"],
                 **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
        check_store_size(self.name, num_samples, num_classes)
        hp = self.spec.check({"lam": lam, "tau": tau, "e_tilde": e_tilde, "e_start": e_start})
        self.lam, self.tau, self.e_tilde, self.e_start = hp["lam"], hp["tau"], hp["e_tilde"], hp["e_start"]
        self.store = HostLogitStore(num_samples, num_classes, self.e_tilde)

    @property
    def active(self) -> bool:
        return self.epoch >= self.spec.active_from({"e_start": self.e_start, "e_tilde": self.e_tilde})

    def regularizer(self, logits: Tensor, inputs: Tensor, targets: Tensor,
                    indices: Tensor | None) -> Tensor | float:
        if indices is None:
            raise ValueError("saf_official needs each sample's dataset index: "
                             "call step(inputs, targets, indices)")
        old = self.store.exchange(self.epoch % self.e_tilde, indices, logits, read=self.active)
        if old is None:
            return 0.0
        return self.lam * trajectory_loss(logits, old, self.tau)

    def extra_metrics(self) -> dict[str, float]:
        return {"saf_store_bytes": float(self.store.nbytes)}

    def extra_state(self) -> dict[str, list[Tensor]]:
        return {"store": [torch.from_numpy(self.store.table)]}  # the host table itself, not a copy

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["store"] = torch.from_numpy(self.store.table)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.store.table[...] = state["store"].numpy()
