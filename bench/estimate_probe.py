"""What `--estimate` measures: a few warm steps of every distinct combination of a grid, on this device.

Cells that share data shape, model, batch, precision and memory format form a group: one initial model,
each method of the group built around its own copy with the hyperparameters of its first cell, and the
methods timed in the overhead benchmark's interleaved rounds (bench.measure.timing: a freshly shuffled
order per round, median over rounds, warm-up excluded). SAF and MESA are also timed before their
trajectory loss starts when a cell spends at least a tenth of its epochs there. Evaluation, sharpness
and Hessian-vector products are timed on the same model. Where the dataset's files are present, a few
real batches price the loading (resident sets: the on-device augmentation; streamed ones: the workers).

On a CPU a step of a CIFAR network at batch 128 takes seconds, so the probe times a smaller batch
(`probe_batch`) and scales per sample; on a GPU it times the real batch. Cells differing only in their
class count share their group's timing (the class count changes only the last layer and SAF's store).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import optimizers

from .config import RunConfig
from .data import create_data
from .data.base import BadDataFile
from .errors import UsageError
from .estimate import INACTIVE_SHARE_TIMED, UnitTimes, Workload
from .measure.batches import SHAPES, BatchPool, DataShape
from .measure.memory import release_memory
from .measure.methods import block_steps
from .measure.steps import StepBlock
from .measure.timing import Clock, InterleavedTimer
from .models import create_model
from .schedules import base_optimizer, lr_range

STEP_BUDGET_S = 1.0  # a CPU probe step at most this long: the batch is shrunk to fit (never below 2)
GROUP_BUDGET_S = 6.0  # timed rounds of one group stop after this (at least one round, at most ROUNDS)
ROUNDS = 5
STORE_SAMPLES_MAX = 50_000  # SAF's store in the probe: its per-step cost does not grow with N
LOAD_BATCHES = 4  # real batches timed for the loading share, after one that starts the workers
# Sizes of the datasets whose files are not here to count: (train, test).
KNOWN_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "fashionmnist": (60_000, 10_000),
               "imagenet": (1_281_167, 50_000), "synthetic": (512, 256)}
KNOWN_SHAPES = {**SHAPES, "synthetic": DataShape((3, 32, 32), 10, 512)}


@dataclass
class DataInfo:
    """A dataset as the estimate sees it: sizes, shape, and the loading time per step if it was measured."""

    train_samples: int
    test_samples: int
    image: tuple[int, int, int]
    num_classes: int
    streamed: bool
    load_s: float = 0.0
    note: str = ""


@dataclass
class Probe:
    """Measures unit times on one device, remembering each group and dataset it has timed."""

    device: torch.device
    progress: bool = False
    notes: list[str] = field(default_factory=list)
    _data: dict[tuple, DataInfo] = field(default_factory=dict)
    _groups: dict[tuple, dict[str, Any]] = field(default_factory=dict)

    @property
    def data_notes(self) -> list[str]:
        """What each dataset's sizes and loading time rest on."""
        return [info.note for info in self._data.values()]

    # ---- data ----------------------------------------------------------------------------------------
    def data_info(self, config: RunConfig) -> DataInfo:
        key = (config.dataset, config.data_root, config.batch_size, config.augment, config.num_workers,
               config.channels_last)
        if key not in self._data:
            self._data[key] = self._measure_data(config)
        return self._data[key]

    def _measure_data(self, config: RunConfig) -> DataInfo:
        try:
            data = create_data(config.dataset, root=config.data_root, batch_size=config.batch_size,
                               device=self.device, seed=0, num_workers=config.num_workers,
                               channels_last=bool(config.channels_last),
                               **({} if config.augment else {"augment": False}))
        except UsageError:  # not here: priced from the known sizes, loading not measured
            train, test = KNOWN_SIZES.get(config.dataset, (0, 0))
            shape = KNOWN_SHAPES[config.dataset]
            return DataInfo(train, test, shape.image, shape.num_classes, config.dataset == "imagenet",
                            note=f"{config.dataset}: files not found, sizes {train:,}/{test:,} assumed, "
                                 "loading not measured")
        streamed = hasattr(data, "test_set")
        test = len(data.test_set) if streamed else len(data.test_targets)
        clock = Clock(self.device)
        next_batch = iter(data.train_batches(0)).__next__
        times = []
        try:
            for i in range(1 + LOAD_BATCHES):
                if i >= data.steps_per_epoch:
                    break
                times.append(clock.time(next_batch))
        except BadDataFile as exc:  # the estimate still prices the compute; the run would stop there
            return DataInfo(data.num_samples, test, (data.in_chans, data.img_size, data.img_size), data.num_classes,
                            streamed,
                            note=f"{config.dataset}: loading not measured, a bad file: {exc}")
        del next_batch  # the loader's workers stop with it
        load = statistics.median(times[1:]) if len(times) > 1 else (times[0] if times else 0.0)
        kind = "workers, overlapping the step" if streamed else "on the training device, before each step"
        return DataInfo(data.num_samples, test, (data.in_chans, data.img_size, data.img_size), data.num_classes,
                        streamed, load, note=f"{config.dataset}: {data.num_samples:,} train / {test:,} test "
                        f"samples; loading {1e3 * load:.1f} ms per batch of {config.batch_size} ({kind}, median "
                        f"of {max(len(times) - 1, 1)} real batches)")

    # ---- compute -------------------------------------------------------------------------------------
    def plan(self, config: RunConfig) -> None:
        """Note the config's combination; `measure()` times every noted one not yet timed."""
        group = self._group(config, self.data_info(config))
        if config.method not in group["methods"] and config.method not in (c.method for c in group["pending"]):
            group["pending"].append(config)
        active = optimizers.method_spec(config.method).active_from(config.hparams())
        if min(active, config.epochs) / config.epochs >= INACTIVE_SHARE_TIMED:
            group["inactive"].add(config.method)  # its epochs before `active` are worth timing apart

    def measure(self) -> None:
        for group in self._groups.values():
            if group["pending"]:
                self._time_group(group)

    def unit_times(self, config: RunConfig, work: Workload) -> UnitTimes:
        info = self.data_info(config)
        group = self._group(config, info)
        if config.method not in group["methods"]:
            self.plan(config)
            self.measure()
        step, inactive = group["methods"][config.method]
        scale = config.batch_size / group["probe"]
        eval_bs = config.eval_batch_size or config.batch_size
        return UnitTimes(
            step_s=step * scale,
            step_inactive_s=inactive * scale if inactive is not None and work.inactive_share >= INACTIVE_SHARE_TIMED
            else None,
            load_s=info.load_s, load_overlaps=info.streamed,
            eval_batch_s=group["eval_per_sample"] * eval_bs,
            sharpness_batch_s=self._extra(group, "sharpness", config) * config.batch_size if config.sharpness else 0.0,
            hvp_s=self._extra(group, "hvp", config) * config.hessian_samples
            if (config.hessian or config.hessian_epochs) else 0.0)

    def _group(self, config: RunConfig, info: DataInfo) -> dict[str, Any]:
        key = (info.image, config.model, config.batch_size, config.precision, config.channels_last,
               config.compile, config.optimizer, config.eval_batch_size)
        if key not in self._groups:
            torch.manual_seed(0)
            net = create_model(config.model, num_classes=info.num_classes, in_chans=info.image[0],
                               img_size=info.image[1]).to(self.device)
            if config.channels_last:
                net = net.to(memory_format=torch.channels_last)
            shape = DataShape(info.image, info.num_classes, info.train_samples)
            probe, step_s = self._probe_batch(net, shape, config)
            # A CPU too slow to double the batch from 2 within budget: one unwarmed round (the model's
            # kernels are warm from the batch probe), so a grid of big nets is priced in about a minute.
            slow = self.device.type == "cpu" and probe <= 2 < config.batch_size
            self._groups[key] = {"net": net, "shape": shape, "probe": probe, "slow": slow, "methods": {},
                                 "pending": [], "inactive": set(),
                                 "eval_per_sample": self._eval_per_sample(net, shape, config, probe)}
            self.notes.append(f"{config.model} on {'x'.join(map(str, info.image))}: timed at batch {probe}"
                              + (f", scaled per sample to {config.batch_size}" if probe != config.batch_size else "")
                              + (f" (a forward-backward there took {step_s:.2f} s: one round of one step per "
                                 "method, not warmed up)" if slow else ""))
        return self._groups[key]

    def _inputs(self, shape: DataShape, batch: int, config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, *shape.image, generator=g).to(self.device)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.randint(0, shape.num_classes, (batch,), generator=g).to(self.device)

    def _probe_batch(self, net: nn.Module, shape: DataShape, config: RunConfig) -> tuple[int, float]:
        """The batch to time and a forward-backward's seconds there: the real batch on a GPU; on a CPU the
        batch doubles from 2 while a step stays within STEP_BUDGET_S."""
        if self.device.type == "cuda":
            return config.batch_size, 0.0
        model = copy.deepcopy(net).train()

        def step(batch: int) -> Callable[[], Any]:
            x, y = self._inputs(shape, batch, config)
            return lambda: F.cross_entropy(model(x), y).backward()

        return _fit_batch(step, config.batch_size, Clock(self.device))

    def _build(self, group: dict[str, Any], config: RunConfig) -> optimizers.Method:
        model = copy.deepcopy(group["net"])
        compiled = torch.compile(model) if config.compile else model
        n = max(min(group["shape"].num_samples, STORE_SAMPLES_MAX), 4 * group["probe"])
        return optimizers.create(
            config.method, compiled, base_optimizer(config, model), label_smoothing=config.label_smoothing,
            precision=config.precision, bn_update=config.bn_update,
            **config.method_kwargs(num_samples=n, num_classes=group["shape"].num_classes,
                                   lr_range=lr_range(config)))

    def _time_group(self, group: dict[str, Any]) -> None:
        """Times every pending method of the group (active, and inactive where it has such epochs)."""
        pending, group["pending"] = group["pending"], []
        shape, probe = group["shape"], group["probe"]
        n = max(min(shape.num_samples, STORE_SAMPLES_MAX), 4 * probe)
        pool = BatchPool.synthetic(shape, probe, n, self.device, channels_last=bool(pending[0].channels_last))
        blocks: dict[str, StepBlock] = {}
        names: dict[str, tuple[str, bool]] = {}
        for config in pending:
            key = config.method
            spec = optimizers.method_spec(config.method)
            active = spec.active_from(config.hparams())
            timed_apart = active > 0 and config.method in group["inactive"]
            for label, epoch in (("", active), ("@inactive", 0)) if timed_apart else (("", active),):
                method = self._build(group, config)
                method.set_epoch(epoch)
                method.model.train()
                name = f"{config.method}{label}#{len(blocks)}"
                # A GPU step takes milliseconds: blocks of several steps keep the clock's own cost out of it.
                blocks[name] = StepBlock(method, pool, block_steps(method, 5 if self.device.type == "cuda" else 1))
                names[name] = (key, bool(label))
        clock = Clock(self.device)
        if not group["slow"]:
            for block in blocks.values():
                block.run(3 if pending[0].compile else 1)  # warm-up (compilation: ESAM compiles twice)
        clock.sync()
        timer = InterleavedTimer(dict(blocks), clock)
        start = time.perf_counter()
        show = self.progress and sys.stderr.isatty()
        with tqdm(total=ROUNDS, desc="timing", leave=False, disable=not show) as bar:
            while True:
                timer.round()
                bar.update(1)
                rounds = len(timer.orders)
                spent = time.perf_counter() - start
                if group["slow"] or rounds >= ROUNDS or spent * (rounds + 1) / rounds > GROUP_BUDGET_S:
                    break
        for name, block in blocks.items():
            key, inactive = names[name]
            per_step = statistics.median(t / block.steps for t in timer.samples[name])
            active_s, inactive_s = group["methods"].get(key, (None, None))
            group["methods"][key] = (active_s, per_step) if inactive else (per_step, inactive_s)
        del blocks, timer, pool
        release_memory(self.device)  # the next group's models and stores get the whole device

    def _eval_per_sample(self, net: nn.Module, shape: DataShape, config: RunConfig, probe: int) -> float:
        model = copy.deepcopy(net).eval()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)

        def forward(batch: int) -> Callable[[], Any]:
            x, _ = self._inputs(shape, batch, config)

            @torch.no_grad()
            def run() -> None:
                with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                    model(x)

            return run

        clock = Clock(self.device)
        target = config.eval_batch_size or config.batch_size
        batch = target if self.device.type == "cuda" else _fit_batch(forward, target, clock, start=probe)[0]
        return _median_time(forward(batch), clock) / batch

    def _extra(self, group: dict[str, Any], what: str, config: RunConfig) -> float:
        """Seconds per sample of one sharpness batch ('sharpness') or one Hessian-vector product ('hvp')."""
        if what not in group:
            from .sharpness import sam_sharpness

            x, y = self._inputs(group["shape"], group["probe"], config)
            model = copy.deepcopy(group["net"])
            if what == "sharpness":
                fn: Callable[[], Any] = lambda: sam_sharpness(model, [(x, y)], config.sharpness_rho)  # noqa: E731
            else:
                fn = _hvp(model.eval(), x, y)
            group[what] = _median_time(fn, Clock(self.device)) / group["probe"]
        return group[what]


def _hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]

    def product() -> Any:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        dot = sum((g * u).sum() for g, u in zip(grads, v, strict=True))
        return torch.autograd.grad(dot, params)

    return product


def _fit_batch(work: Callable[[int], Callable[[], Any]], target: int, clock: Clock, start: int = 2
               ) -> tuple[int, float]:
    """The batch to time on a CPU, doubled from `start` towards `target` while one call stays within budget,
    and the seconds of one call there."""
    batch = min(start, target)
    fn = work(batch)
    fn()  # warm-up
    seconds = clock.time(fn)
    while batch < target:
        bigger = min(2 * batch, target)
        if seconds * bigger / batch > STEP_BUDGET_S:
            break
        batch, fn = bigger, work(bigger)
        fn()
        seconds = clock.time(fn)
    return batch, seconds


def _median_time(fn: Callable[[], Any], clock: Clock, repeats: int = 3) -> float:
    fn()  # warm-up
    return statistics.median(clock.time(fn) for _ in range(repeats))


def probe_cells(configs: Iterable[RunConfig], device: torch.device, *, world_size: int = 1,
                progress: bool = False) -> tuple[list[tuple[Workload, UnitTimes]], Probe]:
    """Each config's workload and unit times, timing every distinct combination once (groups in order)."""
    probe = Probe(device, progress=progress)
    configs = list(configs)
    for config in configs:
        probe.plan(config)
    probe.measure()  # each group's methods in one set of interleaved rounds
    out = []
    for config in configs:
        info = probe.data_info(config)
        work = Workload.of(config, train_samples=info.train_samples, test_samples=info.test_samples,
                           world_size=world_size)
        out.append((work, probe.unit_times(config, work)))
    return out, probe


__all__: Sequence[str] = ("Probe", "probe_cells")
