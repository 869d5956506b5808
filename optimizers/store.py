"""Per-sample logit store for SAF: each sample's clean logits from the last `slots` epochs.

Epoch e uses slot e % slots: the slot is read (it holds epoch e - slots) before it is overwritten.
The table lives on the model's device, in fp16/bf16 if asked, and every read and write is an
indexed device op, so no step waits on the host.

Under DDP the table is sharded, not replicated: sample i belongs to rank i % world, which keeps
row i // world. Each step all-gathers the global batch's indices and logits, so the owner writes
every sample whoever trained on it, and an all-reduce (one owner per row, zeros elsewhere) brings
each rank the old logits of its own samples. A node therefore holds N x slots x C entries in all,
and a sample's target is its own output from `slots` epochs ago whichever rank saw it then.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _world(group: Any) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group), dist.get_rank(group)
    return 1, 0


class LogitStore:
    def __init__(self, num_samples: int, num_classes: int, slots: int, *, dtype: torch.dtype = torch.float16,
                 device: torch.device | str = "cpu", process_group: Any = None) -> None:
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.slots = int(slots)
        self.group = process_group
        self.world_size, self.rank = _world(process_group)
        rows = math.ceil(self.num_samples / self.world_size)
        # Under DDP one spare row takes the writes of samples this rank does not own (no masking sync).
        self.dump_row = rows if self.world_size > 1 else None
        self.table = torch.zeros(self.slots, rows + (self.world_size > 1), self.num_classes,
                                 dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        return self.table.numel() * self.table.element_size()

    def exchange(self, slot: int, indices: Tensor, logits: Tensor, *, read: bool) -> Tensor | None:
        """Return the slot's old logits for `indices` (float32, if `read`), then store `logits` there."""
        indices = indices.to(self.table.device, torch.long, non_blocking=True)
        values = logits.detach().to(self.table.device, self.table.dtype, non_blocking=True)
        if self.world_size == 1:
            old = self.table[slot].index_select(0, indices).float() if read else None
            self.table[slot].index_copy_(0, indices, values)
            return old
        return self._exchange_sharded(slot, indices, values, read)

    def _exchange_sharded(self, slot: int, indices: Tensor, values: Tensor, read: bool) -> Tensor | None:
        all_indices = self._all_gather(indices)
        mine = (all_indices % self.world_size) == self.rank
        rows = torch.where(mine, all_indices // self.world_size, self.dump_row)
        old = None
        if read:
            gathered = self.table[slot].index_select(0, rows)
            owned = torch.where(mine[:, None], gathered, torch.zeros_like(gathered))
            dist.all_reduce(owned, group=self.group)  # exactly one rank contributes each row
            batch = indices.shape[0]
            old = owned[self.rank * batch:(self.rank + 1) * batch].float()
        self.table[slot].index_copy_(0, rows, self._all_gather(values))
        return old

    def _all_gather(self, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table, "world_size": self.world_size, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.world_size or state["table"].shape != self.table.shape:
            raise ValueError(f"SAF store saved for world size {state['world_size']} and shape "
                             f"{tuple(state['table'].shape)} cannot load into world size {self.world_size} "
                             f"and shape {tuple(self.table.shape)}")
        self.table.copy_(state["table"])
