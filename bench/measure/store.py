"""The SAF store report: sizes from the formula, the measured cost of its reads and writes, and the
trajectory-loss error of 16-bit storage.

Sizes are for ImageNet-1k (N x e_tilde x C, ours sharded per rank against the official full copy per rank);
the per-step exchange (LogitStore.read + write against the official host numpy store) is timed at
ImageNet batch sizes with N scaled to what fits; the dtype error compares fp16/bf16 storage with fp32.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from optimizers.store import EPOCH_BYTES, LogitStore
from optimizers.trajectory import trajectory_loss

from ..errors import UsageError
from .batches import IMAGENET_SAMPLES
from .memory import DEVICE_STORE_SHARE, fit_samples, release_memory
from .official_saf import HostLogitStore
from .rows import StoreRow
from .timing import Block, Clock, InterleavedTimer, Spread

_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}


def saf_store_bytes_per_rank(num_samples: int, num_classes: int, e_tilde: int, itemsize: int,
                             world_size: int = 1) -> tuple[int, int]:
    """(all, logits alone) of optimizers.store.LogitStore on one rank: ceil(N / world) rows (+1 spare
    row under DDP) x e_tilde slots, each C logits plus the epoch that wrote it."""
    rows = math.ceil(num_samples / world_size) + (world_size > 1)
    logits = rows * e_tilde * num_classes * itemsize
    return logits + rows * e_tilde * EPOCH_BYTES, logits


def official_store_bytes_per_rank(num_samples: int, num_classes: int, e_tilde: int) -> int:
    """The official design: every rank holds all N samples in float32."""
    return num_samples * e_tilde * num_classes * 4


def where_store_lives(bytes_per_rank: int, device: torch.device) -> str:
    """On the GPU when it takes at most DEVICE_STORE_SHARE of its memory, else pinned host memory."""
    if device.type != "cuda":
        return "host (no GPU here)"
    total = torch.cuda.get_device_properties(device).total_memory
    if bytes_per_rank <= DEVICE_STORE_SHARE * total:
        return f"device ({bytes_per_rank / total:.0%} of {torch.cuda.get_device_name(device)})"
    return "pinned host (too large for the device)"


def store_sizes(*, num_samples: int = IMAGENET_SAMPLES, num_classes: int = 1000, e_tilde: int = 3,
                world_size: int = 8, device: torch.device | None = None) -> list[StoreRow]:
    """Bytes per rank and per node of each design, from the formula, and where ours would live."""
    device = device or torch.device("cpu")
    rows = []
    for world in sorted({1, world_size}):
        for dtype in ("float16", "bfloat16", "float32"):
            per_rank, logits = saf_store_bytes_per_rank(num_samples, num_classes, e_tilde, _ITEMSIZE[dtype],
                                                        world)
            rows.append(StoreRow("size", "saf", dtype, num_samples, num_classes, e_tilde, world, per_rank,
                                 per_rank * world, logit_bytes_per_rank=logits,
                                 location=where_store_lives(per_rank, device),
                                 note="sharded: rank r keeps samples i with i % world == r"))
        per_rank = official_store_bytes_per_rank(num_samples, num_classes, e_tilde)
        rows.append(StoreRow("size", "saf_official", "float32", num_samples, num_classes, e_tilde, world,
                             per_rank, per_rank * world, logit_bytes_per_rank=per_rank,
                             location="host (numpy), one full copy per rank",
                             note="sized N x e_tilde x C as here; the official code allocates a fixed array"))
    return rows


@dataclass(frozen=True)
class LogitCase:
    """Logits like a trained classifier's: non-target logits ~ N(0, scale^2), the labelled class
    `margin` above them (uniform in [3, 15]: from unsure to confident), and the logits a sample gets
    e_tilde epochs later differing by N(0, drift^2) per class (1.0 mid-training, 0.3 late)."""

    name: str
    num_classes: int
    batch_size: int
    drift: float
    scale: float = 2.5

    def logits(self, seed: int = 0) -> tuple[Tensor, Tensor]:
        """(old, new) float32 logits [B, C]."""
        g = torch.Generator().manual_seed(seed)
        b, c = self.batch_size, self.num_classes
        old = torch.randn(b, c, generator=g) * self.scale
        labels = torch.randint(0, c, (b,), generator=g)
        old[torch.arange(b), labels] += 3 + 12 * torch.rand(b, generator=g)
        new = old + self.drift * torch.randn(b, c, generator=g)
        return old, new


LOGIT_CASES: tuple[LogitCase, ...] = tuple(
    LogitCase(f"{data}, {stage}", classes, batch, drift)
    for data, classes, batch in (("cifar10", 10, 128), ("cifar100", 100, 128), ("imagenet", 1000, 256))
    for stage, drift in (("mid-training", 1.0), ("late", 0.3)))


def storage_loss_error(case: LogitCase, dtype: torch.dtype, *, tau: float = 5.0,
                       seed: int = 0) -> tuple[float, float]:
    """(trajectory loss with a float32 store, its relative change when the store holds `dtype`).

    Both go through LogitStore: the old logits are written at epoch 0 and read back at epoch 1.
    """
    old, new = case.logits(seed)
    idx = torch.arange(case.batch_size)
    losses = []
    for store_dtype in (torch.float32, dtype):
        store = LogitStore(case.batch_size, case.num_classes, 1, dtype=store_dtype)
        store.write(0, idx, old)
        stored, present = store.read(1, idx)
        assert bool(present.all())
        losses.append(float(trajectory_loss(new, stored, tau)))
    return losses[0], abs(losses[1] - losses[0]) / losses[0]


def dtype_error_rows(cases: Sequence[LogitCase] = LOGIT_CASES) -> list[StoreRow]:
    rows = []
    for case in cases:
        for dtype in (torch.float16, torch.bfloat16):
            ref, err = storage_loss_error(case, dtype)
            rows.append(StoreRow("dtype_error", "saf", str(dtype).removeprefix("torch."), case.batch_size,
                                 case.num_classes, e_tilde=1, batch_size=case.batch_size, logits_case=case.name,
                                 trajectory_loss_fp32_store=ref, rel_loss_error=err,
                                 note="float32 logits (fp32 training); bf16 autocast logits store exactly"))
    return rows


class ExchangeBlock(Block):
    """`steps` store exchanges with indices sweeping the store: what SAF's step does to its store
    (read the logits of e_tilde epochs ago, then write this step's), or the official design's."""

    def __init__(self, store: LogitStore | HostLogitStore, index_batches: Tensor, logits: Tensor,
                 steps: int) -> None:
        self.store, self.index_batches, self.logits, self.steps = store, index_batches, logits, steps
        self.cursor = 0

    def run(self, steps: int) -> None:
        for _ in range(steps):
            idx = self.index_batches[self.cursor % self.index_batches.shape[0]]
            self.cursor += 1
            if isinstance(self.store, HostLogitStore):
                self.store.exchange(1, idx, self.logits, read=True)
            else:
                epoch = self.store.slots + 1  # any active epoch: reads slot 1, then writes it
                self.store.read(epoch, idx)
                self.store.write(epoch, idx, self.logits)


def measure_store_exchange(device: torch.device, *, num_samples: int, batch_size: int = 256,
                           num_classes: int = 1000, e_tilde: int = 3, steps: int = 20, repeats: int = 10,
                           seed: int = 0, progress: bool = False) -> list[StoreRow]:
    """Per-step cost of the store's reads and writes: ours in each dtype on the device, and the official.

    N is scaled down to what fits (all variants are allocated at once so they can be interleaved).
    """
    dtypes = ("float16", "bfloat16", "float32")
    per_sample = e_tilde * num_classes
    marks = e_tilde * EPOCH_BYTES * len(dtypes)  # the written-epoch marks of our stores
    n = fit_samples(num_samples, device_bytes_per_sample=per_sample * sum(_ITEMSIZE[d] for d in dtypes) + marks,
                    host_bytes_per_sample=per_sample * 4, device=device)
    if n < batch_size:
        raise UsageError(f"the stores do not fit in memory even for one batch ({batch_size} samples)")
    note = f"N scaled from {num_samples:,} to {n:,} to fit" if n < num_samples else ""
    g = torch.Generator().manual_seed(seed)
    steps_per_sweep = n // batch_size
    index_batches = torch.randperm(n, generator=g)[: steps_per_sweep * batch_size].view(-1, batch_size)
    index_batches = index_batches.to(device)
    # The logits a step produces: bf16 under autocast on a GPU, float32 on the CPU.
    logits_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    logits = (torch.randn(batch_size, num_classes, generator=g) * 3).to(device, logits_dtype)
    stores: dict[str, LogitStore | HostLogitStore] = {
        f"saf {d}": LogitStore(n, num_classes, e_tilde, dtype=getattr(torch, d), device=device)
        for d in dtypes}
    stores["saf_official float32"] = HostLogitStore(n, num_classes, e_tilde)
    blocks = {name: ExchangeBlock(s, index_batches, logits, steps) for name, s in stores.items()}
    for block in blocks.values():
        block.run(2)
    clock = Clock(device)
    timer = InterleavedTimer(dict(blocks), clock, seed=seed)
    show = progress and sys.stderr.isatty()
    for _ in tqdm(range(repeats), desc="store exchange", leave=False, disable=not show):
        timer.round()
    rows = []
    for name, store in stores.items():
        design, dtype = name.split()
        ms = Spread.of([1e3 * t / steps for t in timer.samples[name]])
        official = design == "saf_official"
        location = "host (numpy), GPU->CPU->numpy copy per step" if official else device.type
        row_bytes = num_classes * _ITEMSIZE[dtype] + (0 if official else EPOCH_BYTES)  # ours moves the mark too
        rows.append(StoreRow("exchange", design, dtype, n, num_classes, e_tilde, world_size=1,
                             bytes_per_rank=store.nbytes, location=location, batch_size=batch_size,
                             exchange_ms_median=ms.median, exchange_ms_q1=ms.q1, exchange_ms_q3=ms.q3,
                             bytes_moved_per_step=2 * batch_size * row_bytes, note=note))
    del stores, blocks, timer
    release_memory(device)
    return rows


def store_report(device: torch.device, *, num_samples: int, batch_size: int = 256, num_classes: int = 1000,
                 e_tilde: int = 3, world_size: int = 8, steps: int = 20, repeats: int = 10, seed: int = 0,
                 progress: bool = False) -> list[StoreRow]:
    """Sizes for ImageNet-1k from the formula, the measured exchange cost (N scaled), the dtype errors."""
    return (store_sizes(num_classes=num_classes, e_tilde=e_tilde, world_size=world_size, device=device)
            + measure_store_exchange(device, num_samples=num_samples, batch_size=batch_size,
                                     num_classes=num_classes, e_tilde=e_tilde, steps=steps, repeats=repeats,
                                     seed=seed, progress=progress)
            + dtype_error_rows())
