"""The rows of the overhead CSVs, one flat dataclass per kind (steps, loop, store); analysis reads their columns.

The files they go to are named in bench/records.py (`overhead_csv`); `records` adds the provenance columns,
`text_table` prints rows as the command's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class OverheadRow:
    """One method on one model: a flat CSV row (provenance columns are added when written)."""

    model: str
    shape: str
    image_shape: str
    num_classes: int
    method: str
    batch_size: int
    precision: str
    base_optimizer: str
    steps_per_block: int
    rounds: int
    warmup_steps: int
    num_samples: int
    timer: str
    channels_last: bool
    compiled: bool
    images_per_s_median: float
    images_per_s_q1: float
    images_per_s_q3: float
    images_per_s_min: float
    images_per_s_max: float
    step_ms_median: float
    time_ratio_median: float  # step time / SGD's, median of per-round ratios
    time_ratio_q1: float
    time_ratio_q3: float
    throughput_ratio_median: float  # images/s / SGD's (the paper's "% of SGD throughput"), median per round
    state_bytes: int  # device-resident between steps (weights, grads, optimizer state, store, EMA)
    step_peak_extra_bytes: int | None  # CUDA: peak allocated during a step minus allocated before it
    peak_mem_bytes: int | None  # state + step increment: what the method needs on its own (CUDA)
    saf_store_bytes: int | None
    saf_store_location: str | None
    mesa_ema_bytes: int | None
    note: str = ""


@dataclass
class LoopRow:
    """One method on one model: step-only images/s against the run's real loop (`--loop`)."""

    model: str
    shape: str
    method: str
    batch_size: int
    precision: str
    steps_per_block: int
    rounds: int
    num_train: int
    timer: str
    step_images_per_s_median: float
    loop_images_per_s_median: float
    loop_ratio_median: float  # loop images/s / step-only images/s, median per round (bench.targets.LOOP_TARGET)
    loop_ratio_q1: float
    loop_ratio_q3: float
    note: str = ""


@dataclass
class StoreRow:
    """One line of the SAF store report (`--store-report`): a size, a measured exchange or a dtype error."""

    section: str  # "size" (formula), "exchange" (measured per-step cost) or "dtype_error"
    design: str  # "saf" (ours: sharded, device, fp16/bf16) or "saf_official" (per rank, host numpy fp32)
    dtype: str
    num_samples: int
    num_classes: int
    e_tilde: int
    world_size: int | None = None
    bytes_per_rank: int | None = None  # all the store allocates on a rank (ours: logits + written-epoch marks)
    bytes_per_node: int | None = None
    logit_bytes_per_rank: int | None = None  # the logits table alone (N x e_tilde x C x itemsize for one rank)
    location: str | None = None
    batch_size: int | None = None
    exchange_ms_median: float | None = None
    exchange_ms_q1: float | None = None
    exchange_ms_q3: float | None = None
    bytes_moved_per_step: int | None = None
    logits_case: str | None = None
    trajectory_loss_fp32_store: float | None = None
    rel_loss_error: float | None = None
    note: str = ""


def text_table(header: Sequence[str], lines: Sequence[Sequence[str]], align: str) -> str:
    """Rows as printed: columns padded to their widest cell; `align` has one 'l' or 'r' per column."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:{'<' if a == 'l' else '>'}{w}}}" for a, w in zip(align, widths, strict=True))
    return "\n".join(fmt.format(*row).rstrip() for row in (header, *lines))


def records(rows: Sequence[Any], provenance: dict[str, str]) -> list[dict[str, Any]]:
    """Dataclass rows as flat dicts, each carrying the provenance columns."""
    return [{**asdict(r), **provenance} for r in rows]
