"""Per-sample logit store for SAF: each sample's clean logits from the last `slots` epochs.

Epoch e uses slot e % slots: the slot is read (it holds epoch e - slots) before it is overwritten.
Each row also records the epoch that wrote it, so a sample the sampler skipped (drop_last) or a
step that fp16 skipped gives no target rather than a stale or zero one. The mark is int16: for
ImageNet it adds 7.7 MB, not int32's 15.4 MB, which keeps a node's fp16 store under 7.7 GB.
The table lives on the model's device, in fp16/bf16 if asked, and every read and write is an
indexed device op, so no step waits on the host.

Under DDP the table is sharded, not replicated: sample i belongs to rank i % world, which keeps
row i // world. Reads and writes all-gather the global batch's indices (and logits), so the owner
writes every sample whoever trained on it, and an all-reduce (one owner per row, zeros elsewhere)
brings each rank the old logits of its own samples. A node therefore holds N x slots x C entries
in all, and a sample's target is its own output from `slots` epochs ago whichever rank saw it then.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

EPOCH_DTYPE = torch.int16  # the written-epoch marks; NCCL has no int16, so they cross ranks as int32
EPOCH_BYTES = torch.iinfo(EPOCH_DTYPE).bits // 8
MAX_EPOCH = torch.iinfo(EPOCH_DTYPE).max


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
        shape = (self.slots, rows + (self.world_size > 1))
        self.table = torch.zeros(*shape, self.num_classes, dtype=dtype, device=device)
        self.written = torch.full(shape, -1, dtype=EPOCH_DTYPE, device=device)  # epoch that wrote each row

    @property
    def nbytes(self) -> int:
        return self.table.numel() * self.table.element_size() + self.written.numel() * self.written.element_size()

    def read(self, epoch: int, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Logits the samples got `slots` epochs before `epoch` (float32; float64 from a float64 store), and which
        of them exist."""
        slot, wanted = epoch % self.slots, epoch - self.slots
        indices = self._local(indices)
        if self.world_size == 1:
            return _widened(self.table[slot, indices]), self.written[slot, indices] == wanted
        all_indices = self._all_gather(indices)
        mine, rows = self._ownership(all_indices)
        logits = torch.where(mine[:, None], self.table[slot, rows], 0)
        written = torch.where(mine, self.written[slot, rows], 0).int()
        dist.all_reduce(logits, group=self.group)  # exactly one rank contributes each row
        dist.all_reduce(written, group=self.group)
        part = slice(self.rank * indices.shape[0], (self.rank + 1) * indices.shape[0])
        return _widened(logits[part]), written[part] == wanted

    def write(self, epoch: int, indices: Tensor, logits: Tensor) -> None:
        if not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"epoch={epoch} is outside the SAF store's range [0, {MAX_EPOCH}]")
        slot = epoch % self.slots
        indices = self._local(indices)
        values = logits.detach().to(self.table.device, self.table.dtype, non_blocking=True)
        if self.world_size > 1:
            all_indices = self._all_gather(indices)
            _, indices = self._ownership(all_indices)
            values = self._all_gather(values)
        self.table[slot].index_copy_(0, indices, values)
        self.written[slot].index_fill_(0, indices, epoch)

    def _local(self, indices: Tensor) -> Tensor:
        return indices.to(self.table.device, torch.long, non_blocking=True)

    def _ownership(self, all_indices: Tensor) -> tuple[Tensor, Tensor]:
        mine = (all_indices % self.world_size) == self.rank
        return mine, torch.where(mine, all_indices // self.world_size, self.dump_row)

    def _all_gather(self, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table, "written": self.written, "world_size": self.world_size, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.world_size or state["table"].shape != self.table.shape:
            raise ValueError(f"SAF store saved for world size {state['world_size']} and shape "
                             f"{tuple(state['table'].shape)} cannot load into world size {self.world_size} "
                             f"and shape {tuple(self.table.shape)}")
        self.table.copy_(state["table"])
        self.written.copy_(state["written"])


def _widened(logits: Tensor) -> Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
