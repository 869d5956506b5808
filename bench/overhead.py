"""What a training step costs, per method, measured in one process (`safbench overhead`).

Three measurements, each a list of flat rows for a CSV:

- `measure_steps`: the steady-state step of every method on one model and batch shape. Each method
  gets its own copy of the same initial model and its own base optimizer; batches are synthetic and
  already on the device (no loader in the timed region); SAF gets real per-sample indices sweeping a
  dataset of N samples. Methods are timed round-robin: every round times each method once, for a
  block of `steps` steps, in a freshly shuffled order, and the ratio to SGD is taken inside the round.
  A machine whose speed drifts (other jobs, clocks, heat) moves all methods of a round together, so
  the per-round ratio cancels it where absolute times do not; the median over rounds is reported.
- `measure_loop`: images/s of `method.step` on pre-made batches against bench/run.py's real epoch
  loop (device-resident batches, augmentation, scheduler, metric accumulation), interleaved the same way.
- `store_report`: SAF store sizes from the formula, where the store lives, the measured per-step cost
  of its reads and writes (LogitStore.read + write) at ImageNet batch sizes against the official design,
  and how much fp16/bf16 storage moves the trajectory loss compared with fp32 storage.

Timing: CUDA events on a GPU (the device is synchronised before each block, so queued work of the
previous method is never charged to the next), `time.perf_counter` on the CPU. Warm-up (and
torch.compile's compilation) runs before any timed round.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

import optimizers
from optimizers import Method, unwrap
from optimizers.store import EPOCH_BYTES, LogitStore
from optimizers.trajectory import trajectory_loss

from .config import RunConfig
from .errors import UsageError
from .models import create_model
from .official_saf import HostLogitStore, OfficialSAF
from .schedules import base_optimizer, lr_scheduler

REFERENCE = "sgd"
# Every registered method, with the official SAF store design measured beside ours.
METHODS: tuple[str, ...] = tuple(x for m in optimizers.methods() for x in ((m, "saf_official") if m == "saf" else (m,)))
PRECISIONS = ("fp32", "bf16")
IMAGENET_SAMPLES = 1_281_167
CIFAR_SAMPLES = 50_000
CPU_IMAGENET_SAMPLES = 50_000  # a CPU run cannot hold (or usefully sweep) the ImageNet-size store
# Share of free memory a store may take: the rest stays for models, activations and the other methods.
DEVICE_STORE_SHARE = 0.4
HOST_STORE_SHARE = 0.5
_BATCH_POOL = 2  # distinct pre-made image batches cycled through (the indices always sweep N samples)


@dataclass(frozen=True)
class DataShape:
    image: tuple[int, int, int]
    num_classes: int
    num_samples: int  # the dataset size SAF's store is sized for by default


SHAPES: dict[str, DataShape] = {
    "cifar10": DataShape((3, 32, 32), 10, CIFAR_SAMPLES),
    "cifar100": DataShape((3, 32, 32), 100, CIFAR_SAMPLES),
    "imagenet": DataShape((3, 224, 224), 1000, IMAGENET_SAMPLES),
    "fashionmnist": DataShape((1, 28, 28), 10, 60_000),  # the CPU-sized real-data grid's shape
}


# ---- statistics --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """Median with interquartile range and extremes of a list of measurements."""

    median: float
    q1: float
    q3: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no measurements to summarise")
        vals = sorted(float(v) for v in values)
        if len(vals) == 1:
            return cls(vals[0], vals[0], vals[0], vals[0], vals[0])
        # "inclusive": quartiles interpolated between the measurements, never outside their range.
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
        return cls(statistics.median(vals), q1, q3, vals[0], vals[-1])


# ---- clocks and interleaved rounds -------------------------------------------------------------
class Clock:
    """Times a callable: CUDA events between two device synchronisations, else perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.name = "cuda_events" if self.cuda else "perf_counter"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds `fn` keeps the device busy (the host's wall time on the CPU)."""
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        self.sync()  # nothing of the previous block may still be queued
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3


class InterleavedTimer:
    """Round-robin timing: `round()` times every block once, in a new random order each round."""

    def __init__(self, blocks: dict[str, Callable[[], Any]], clock: Clock, *, seed: int = 0) -> None:
        self.blocks = blocks
        self.clock = clock
        self.samples: dict[str, list[float]] = {name: [] for name in blocks}
        self.orders: list[list[str]] = []
        self._rng = random.Random(seed)

    def round(self) -> None:
        order = list(self.blocks)
        self._rng.shuffle(order)  # a fixed order would hand a drifting machine's slow end to one method
        gc_was_on = gc.isenabled()
        gc.disable()  # a collection landing in one block would be charged to that method alone
        try:
            for name in order:
                self.samples[name].append(self.clock.time(self.blocks[name]))
        finally:
            if gc_was_on:
                gc.enable()
        self.orders.append(order)

    def ratios(self, reference: str) -> dict[str, list[float]]:
        """Per-round time ratios block / reference (a round's blocks run seconds apart at most)."""
        ref = self.samples[reference]
        return {name: [t / r for t, r in zip(times, ref, strict=True)]
                for name, times in self.samples.items()}


# ---- synthetic device-resident batches -----------------------------------------------------------
@dataclass
class BatchPool:
    """A few image batches on the device and index batches sweeping N samples (drop-last, shuffled)."""

    images: list[Tensor]
    targets: list[Tensor]
    index_batches: Tensor  # [N // B, B] int64 on the device

    @classmethod
    def synthetic(cls, shape: DataShape, batch_size: int, num_samples: int, device: torch.device, *,
                  seed: int = 0, channels_last: bool = False) -> BatchPool:
        g = torch.Generator().manual_seed(seed)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        images = [torch.randn(batch_size, *shape.image, generator=g).to(device).contiguous(memory_format=fmt)
                  for _ in range(_BATCH_POOL)]
        targets = [torch.randint(0, shape.num_classes, (batch_size,), generator=g).to(device)
                   for _ in range(_BATCH_POOL)]
        steps = num_samples // batch_size
        perm = torch.randperm(num_samples, generator=g)[: steps * batch_size].view(steps, batch_size)
        return cls(images, targets, perm.to(device))

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        k = step % len(self.images)
        return self.index_batches[step % self.index_batches.shape[0]], self.images[k], self.targets[k]


class StepBlock:
    """`steps` consecutive method.step calls on the pool's batches; each block has its own cursor."""

    def __init__(self, method: Method, pool: BatchPool, steps: int) -> None:
        self.method, self.pool, self.steps = method, pool, steps
        self.cursor = 0

    def run(self, steps: int) -> None:
        for _ in range(steps):
            indices, inputs, targets = self.pool.batch(self.cursor)
            self.cursor += 1
            self.method.step(inputs, targets, indices)

    def __call__(self) -> None:
        self.run(self.steps)


# ---- methods -------------------------------------------------------------------------------------
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


def active_epoch(method: Method) -> int:
    """The first epoch at which the method does all of its work (SAF reads its store, MESA runs its EMA)."""
    return method.spec.active_from({h.name: getattr(method, h.name, h.default) for h in method.spec.hparams})


def block_steps(method: Method, steps: int) -> int:
    """`steps` rounded up to whole cycles of the method's work (LookSAM: k), so every block costs the same."""
    cycle = method.spec.cycle({h.name: getattr(method, h.name, h.default) for h in method.spec.hparams})
    return math.ceil(steps / cycle) * cycle


def _unique_bytes(tensors: Iterator[Tensor], device: torch.device) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None and t.device.type == device.type and t.numel():
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def method_state_bytes(method: Method, device: torch.device) -> int:
    """Device bytes the method keeps between steps: weights, buffers, grads, optimizer state, store, EMA."""
    net = unwrap(method.model)

    def tensors() -> Iterator[Tensor]:
        yield from net.parameters()
        yield from net.buffers()
        yield from (p.grad for p in net.parameters() if p.grad is not None)
        for state in method.base_optimizer.state.values():
            yield from (v for v in state.values() if torch.is_tensor(v))
        store = getattr(method, "store", None)
        if isinstance(store, LogitStore):
            yield from (t for t in store.state_dict().values() if torch.is_tensor(t))
        ema = getattr(method, "ema", None)
        if isinstance(ema, nn.Module):
            yield from ema.state_dict().values()
        yield from getattr(method, "g_v", None) or []  # LookSAM's reused direction

    return _unique_bytes(tensors(), device)


def store_bytes(method: Method) -> int | None:
    store = getattr(method, "store", None)
    return int(store.nbytes) if store is not None else None


def ema_bytes(method: Method) -> int | None:
    ema = getattr(method, "ema", None)
    if not isinstance(ema, nn.Module):
        return None
    return sum(t.numel() * t.element_size() for t in ema.state_dict().values())


def store_location(method: Method) -> str | None:
    store = getattr(method, "store", None)
    if isinstance(store, HostLogitStore):
        return "host (numpy float32, per rank)"
    if isinstance(store, LogitStore):
        return f"{store.table.device.type} ({str(store.table.dtype).removeprefix('torch.')})"
    return None


# ---- memory budgets ------------------------------------------------------------------------------
def host_available_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def device_free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return host_available_bytes()


def fit_samples(requested: int, *, device_bytes_per_sample: int, host_bytes_per_sample: int,
                device: torch.device) -> int:
    """The largest N <= requested whose stores fit their budgets (device and host shares of free memory)."""
    if device.type != "cuda":  # one memory: both budgets come out of the host's
        device_bytes_per_sample, host_bytes_per_sample = 0, device_bytes_per_sample + host_bytes_per_sample
    limit = requested
    if device_bytes_per_sample:
        limit = min(limit, int(DEVICE_STORE_SHARE * device_free_bytes(device)) // device_bytes_per_sample)
    if host_bytes_per_sample:
        limit = min(limit, int(HOST_STORE_SHARE * host_available_bytes()) // host_bytes_per_sample)
    return max(0, limit)


# ---- the step benchmark --------------------------------------------------------------------------
@dataclass(frozen=True)
class OverheadConfig:
    """One model and batch shape; every listed method is timed on it in the same rounds."""

    model: str
    device: torch.device = torch.device("cpu")
    shape: str = "cifar10"
    methods: tuple[str, ...] = METHODS
    batch_size: int = 64
    precision: str = "fp32"
    steps: int = 3  # steps per timed block
    repeats: int = 10  # rounds
    warmup: int = 2  # untimed steps per method before the first round
    num_samples: int | None = None  # SAF's dataset size; None: the shape's (CIFAR 50,000; ImageNet 1,281,167)
    seed: int = 0
    channels_last: bool = False
    compile: bool = False
    optimizer: str = "auto"  # auto: AdamW for ViTs, SGD otherwise

    def validate(self, *, reference: bool = True) -> None:
        """UsageError naming the first bad value; `reference`: the methods must include SGD."""
        if self.shape not in SHAPES:
            raise UsageError(f"shape={self.shape!r} is invalid: allowed shapes are {', '.join(SHAPES)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise UsageError(f"method {unknown[0]!r} is unknown: allowed methods are {', '.join(METHODS)}")
        if reference and REFERENCE not in self.methods:
            raise UsageError(f"methods must include {REFERENCE!r}: every ratio is taken against it")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision={self.precision!r} is invalid: "
                             f"allowed values are {', '.join(PRECISIONS)}")
        if self.optimizer not in ("auto", "sgd", "adamw"):
            raise UsageError(f"optimizer={self.optimizer!r} is invalid: allowed values are auto, sgd, adamw")
        for name, low in (("batch_size", 1), ("steps", 1), ("repeats", 1), ("warmup", 0)):
            if getattr(self, name) < low:
                raise UsageError(f"{name}={getattr(self, name)} is invalid: "
                                 f"allowed values are integers >= {low}")
        if self.num_samples is not None and self.num_samples < self.batch_size:
            raise UsageError(f"num_samples={self.num_samples} is invalid: allowed values are >= the batch "
                             f"size ({self.batch_size})")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("device='cuda' is invalid here: no CUDA device is visible; allowed: cpu")

    @property
    def data_shape(self) -> DataShape:
        return SHAPES[self.shape]

    @property
    def base_optimizer(self) -> str:
        return optimizer_for(self.model) if self.optimizer == "auto" else self.optimizer


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


class StepBenchmark:
    """All methods of one config, built and warmed up; `round()` times them once each, interleaved."""

    def __init__(self, config: OverheadConfig, *, notes: Sequence[str] = ()) -> None:
        config.validate()
        self.config = config
        self.device = config.device
        self.notes = list(notes)
        shape = config.data_shape
        self.num_samples = self._resolve_num_samples()
        torch.manual_seed(config.seed)  # every method starts from the same weights
        net = create_model(config.model, num_classes=shape.num_classes, in_chans=shape.image[0],
                           img_size=shape.image[1]).to(self.device)
        if config.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.pool = BatchPool.synthetic(shape, config.batch_size, self.num_samples, self.device,
                                        seed=config.seed, channels_last=config.channels_last)
        self.methods: dict[str, Method] = {}
        for name in config.methods:
            copy_ = copy.deepcopy(net)
            model: nn.Module = torch.compile(copy_) if config.compile else copy_
            method = build_method(name, model, optimizer=config.base_optimizer, num_samples=self.num_samples,
                                  num_classes=shape.num_classes, precision=config.precision)
            self.methods[name] = method
        # Every method at its fully active epoch: SAF reads its store, MESA runs its EMA forward.
        epoch = max(active_epoch(m) for m in self.methods.values())
        for method in self.methods.values():
            method.set_epoch(epoch)
            method.model.train()
        self.blocks = {name: StepBlock(m, self.pool, block_steps(m, config.steps)) for name, m in self.methods.items()}
        self.clock = Clock(self.device)
        self.timer = InterleavedTimer(dict(self.blocks), self.clock, seed=config.seed)
        self.step_extra: dict[str, int | None] = {name: None for name in self.methods}

    def _resolve_num_samples(self) -> int:
        cfg, shape = self.config, self.config.data_shape
        requested = cfg.num_samples or shape.num_samples
        entries = shape.num_classes * 3  # e_tilde = 3, SAF's default
        device_per = (2 * entries + 3 * EPOCH_BYTES) if "saf" in cfg.methods else 0  # float16 + marks, device
        host_per = 4 * entries if OfficialSAF.name in cfg.methods else 0  # float32 numpy on the host
        n = fit_samples(requested, device_bytes_per_sample=device_per, host_bytes_per_sample=host_per,
                        device=self.device)
        if n < cfg.batch_size:
            raise UsageError(f"the SAF stores do not fit in memory even for one batch "
                             f"({cfg.batch_size} samples)")
        if n < requested:
            self.notes.append(f"N scaled from {requested:,} to {n:,} samples so the stores fit in memory")
        return n

    def warm_up(self) -> None:
        """Untimed steps (and compilation), then each method's step-memory increment on CUDA."""
        # Compiled models compile in their first steps, twice over for ESAM (a no-grad selection pass,
        # then a ceil(gamma * B)-sample pass): three steps at least, or compilation lands in round one.
        steps = max(self.config.warmup, 3) if self.config.compile else self.config.warmup
        for block in self.blocks.values():
            block.run(steps)
        self.clock.sync()
        if self.device.type == "cuda":
            for name, block in self.blocks.items():
                self.step_extra[name] = self._step_increment(block)

    def _step_increment(self, block: StepBlock) -> int:
        self.clock.sync()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        block.run(1)
        self.clock.sync()
        return int(torch.cuda.max_memory_allocated(self.device) - before)

    def round(self) -> None:
        self.timer.round()

    def run(self, *, progress: bool = False) -> list[OverheadRow]:
        self.warm_up()
        show = progress and sys.stderr.isatty()
        for _ in tqdm(range(self.config.repeats), desc=self.config.model, leave=False, disable=not show):
            self.round()
        return self.rows()

    def rows(self) -> list[OverheadRow]:
        cfg, shape = self.config, self.config.data_shape
        per_step = {name: [t / self.blocks[name].steps for t in self.timer.samples[name]] for name in self.methods}
        ratios = {name: [t / r for t, r in zip(times, per_step[REFERENCE], strict=True)]
                  for name, times in per_step.items()}  # per round, per step: blocks may differ in length
        out = []
        for name, method in self.methods.items():
            step_s = per_step[name]
            ips = Spread.of([cfg.batch_size / t for t in step_s])
            ratio = Spread.of(ratios[name])
            state = method_state_bytes(method, self.device)
            extra = self.step_extra[name]
            out.append(OverheadRow(
                model=cfg.model, shape=cfg.shape, image_shape="x".join(map(str, shape.image)),
                num_classes=shape.num_classes, method=name, batch_size=cfg.batch_size,
                precision=cfg.precision, base_optimizer=cfg.base_optimizer, steps_per_block=self.blocks[name].steps,
                rounds=len(step_s), warmup_steps=cfg.warmup, num_samples=self.num_samples,
                timer=self.clock.name, channels_last=cfg.channels_last, compiled=cfg.compile,
                images_per_s_median=ips.median, images_per_s_q1=ips.q1, images_per_s_q3=ips.q3,
                images_per_s_min=ips.min, images_per_s_max=ips.max,
                step_ms_median=1e3 * statistics.median(step_s),
                time_ratio_median=ratio.median, time_ratio_q1=ratio.q1, time_ratio_q3=ratio.q3,
                throughput_ratio_median=statistics.median(1.0 / r for r in ratios[name]),
                state_bytes=state, step_peak_extra_bytes=extra,
                peak_mem_bytes=None if extra is None else state + extra,
                saf_store_bytes=store_bytes(method), saf_store_location=store_location(method),
                mesa_ema_bytes=ema_bytes(method), note="; ".join(self.notes)))
        return out


def measure_steps(config: OverheadConfig, *, notes: Sequence[str] = (),
                  progress: bool = False) -> list[OverheadRow]:
    """Build, warm up and time every method of `config`; the memory is released before returning."""
    bench = StepBenchmark(config, notes=notes)
    try:
        return bench.run(progress=progress)
    finally:
        del bench
        release_memory(config.device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- the real loop against step-only -------------------------------------------------------------
@dataclass
class LoopRow:
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


class LoopBlock:
    """The inner loop of bench/run.py's Run._epoch, evaluation and logging left out.

    Kept line for line with that loop (batches from `data.train_batches`, `method.step`, the
    scheduler's step, loss and accuracy summed on the device); a new epoch starts inside the timed
    block when the previous one runs out, as it does inside run.py's timed region.
    """

    def __init__(self, method: Method, data: Any, scheduler: Any, steps: int, *, first_epoch: int) -> None:
        self.method, self.data, self.scheduler, self.steps = method, data, scheduler, steps
        self.first_epoch = first_epoch
        self.epoch = -1
        self.batches: Iterator[tuple[Tensor, Tensor, Tensor]] = iter(())
        device = method.device
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0

    def _next(self) -> tuple[Tensor, Tensor, Tensor]:
        batch = next(self.batches, None)
        if batch is None:
            self.epoch += 1
            self.method.set_epoch(self.first_epoch + self.epoch)
            self.method.model.train()
            self.batches = iter(self.data.train_batches(self.epoch))
            batch = next(self.batches)
        return batch

    def run(self, steps: int) -> None:
        for _ in range(steps):
            indices, inputs, targets = self._next()
            out = self.method.step(inputs, targets, indices)
            self.scheduler.step()
            self.loss_sum += out.loss * targets.shape[0]
            self.correct += (out.logits.argmax(1) == targets).sum()
            self.seen += targets.shape[0]

    def __call__(self) -> None:
        self.run(self.steps)


def measure_loop(config: OverheadConfig, *, num_train: int, progress: bool = False) -> list[LoopRow]:
    """For each method: step-only images/s on pre-made batches vs the real loop, in interleaved rounds."""
    from .data import create_data  # the loaders are only needed here

    config.validate(reference=False)  # each method is compared with itself here
    shape, device = config.data_shape, config.device
    data = create_data("synthetic", batch_size=config.batch_size, device=device, seed=config.seed,
                       shape=shape.image, num_classes=shape.num_classes, num_train=num_train,
                       num_test=1, channels_last=config.channels_last)
    torch.manual_seed(config.seed)
    net = create_model(config.model, num_classes=shape.num_classes, in_chans=shape.image[0],
                       img_size=shape.image[1]).to(device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    # The step-only side gets a few real batches of the same data, made before timing, and SAF's
    # indices sweep the whole epoch as in the loop (cycling two batches' rows would stay in cache).
    premade = list(islice(data.train_batches(0), _BATCH_POOL))
    plan = getattr(data, "epoch_plan", None)
    sweep = plan(0)[0] if plan is not None else torch.stack([b[0] for b in premade])
    pool = BatchPool([b[1] for b in premade], [b[2] for b in premade], sweep)
    clock = Clock(device)
    rows = []
    for name in config.methods:
        pair = {}
        for side in ("step", "loop"):
            model = copy.deepcopy(net)
            pair[side] = build_method(name, torch.compile(model) if config.compile else model,
                                      optimizer=config.base_optimizer, num_samples=data.num_samples,
                                      num_classes=shape.num_classes, precision=config.precision)
        first = active_epoch(pair["step"])
        pair["step"].set_epoch(first)
        scheduler = lr_scheduler(RunConfig(epochs=200), pair["loop"].base_optimizer, data.steps_per_epoch)
        blocks = {"step": StepBlock(pair["step"], pool, config.steps),
                  "loop": LoopBlock(pair["loop"], data, scheduler, config.steps, first_epoch=first)}
        for block in blocks.values():
            block.run(max(3 if config.compile else 1, config.warmup))
        clock.sync()
        timer = InterleavedTimer(dict(blocks), clock, seed=config.seed)
        show = progress and sys.stderr.isatty()
        for _ in tqdm(range(config.repeats), desc=f"{config.model} {name} loop", leave=False,
                      disable=not show):
            timer.round()
        ratio = Spread.of(timer.ratios("loop")["step"])  # step time / loop time = loop img/s / step img/s
        per_step = {side: [t / config.steps for t in timer.samples[side]] for side in blocks}
        rows.append(LoopRow(
            model=config.model, shape=config.shape, method=name, batch_size=config.batch_size,
            precision=config.precision, steps_per_block=config.steps, rounds=config.repeats,
            num_train=num_train, timer=clock.name,
            step_images_per_s_median=statistics.median(config.batch_size / t for t in per_step["step"]),
            loop_images_per_s_median=statistics.median(config.batch_size / t for t in per_step["loop"]),
            loop_ratio_median=ratio.median, loop_ratio_q1=ratio.q1, loop_ratio_q3=ratio.q3,
            note="synthetic device-resident data (ImageNet itself streams through DataLoader workers)"
            if config.shape == "imagenet" else "synthetic device-resident data, as runs on the small datasets"))
        del pair, blocks, timer
        release_memory(device)
    return rows


# ---- the SAF store ---------------------------------------------------------------------------------
@dataclass
class StoreRow:
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


class _ExchangeBlock:
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

    def __call__(self) -> None:
        self.run(self.steps)


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
    blocks = {name: _ExchangeBlock(s, index_batches, logits, steps) for name, s in stores.items()}
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


# ---- output ----------------------------------------------------------------------------------------
def records(rows: Sequence[Any], provenance: dict[str, str]) -> list[dict[str, Any]]:
    """Dataclass rows as flat dicts, each carrying the provenance columns."""
    return [{**asdict(r), **provenance} for r in rows]
