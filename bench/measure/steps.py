"""The step benchmark: the steady-state training step of every method on one model and batch shape.

Each method gets its own copy of the same initial model and its own base optimizer; batches are
synthetic and already on the device (no loader in the timed region); SAF gets real per-sample indices
sweeping a dataset of N samples. Methods are timed in interleaved rounds (bench.measure.timing), each
for a block of `steps` steps, and the ratio to SGD is taken inside the round; the median over rounds is
reported. Warm-up (and torch.compile's compilation) runs before any timed round.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence

import torch
from tqdm import tqdm

from optimizers import Method
from optimizers.store import EPOCH_BYTES

from ..errors import UsageError
from .batches import BatchPool
from .config import OverheadConfig
from .memory import fit_samples, release_memory
from .methods import (
    REFERENCE,
    active_epoch,
    block_steps,
    ema_bytes,
    method_state_bytes,
    store_bytes,
    store_location,
)
from .official_saf import OfficialSAF
from .rows import OverheadRow
from .timing import Block, Clock, InterleavedTimer, Spread


class StepBlock(Block):
    """`steps` consecutive method.step calls on the pool's batches; each block has its own cursor."""

    def __init__(self, method: Method, pool: BatchPool, steps: int) -> None:
        self.method, self.pool, self.steps = method, pool, steps
        self.cursor = 0

    def run(self, steps: int) -> None:
        for _ in range(steps):
            indices, inputs, targets = self.pool.batch(self.cursor)
            self.cursor += 1
            self.method.step(inputs, targets, indices)


class StepBenchmark:
    """All methods of one config, built and warmed up; `round()` times them once each, interleaved."""

    def __init__(self, config: OverheadConfig, *, notes: Sequence[str] = ()) -> None:
        config.validate()
        self.config = config
        self.device = config.device
        self.notes = list(notes)
        shape = config.data_shape
        self.num_samples = self._resolve_num_samples()
        net = config.initial_model()  # every method starts from the same weights
        self.pool = BatchPool.synthetic(shape, config.batch_size, self.num_samples, self.device,
                                        seed=config.seed, channels_last=config.channels_last)
        self.methods: dict[str, Method] = {name: config.build(name, net, num_samples=self.num_samples)
                                           for name in config.methods}
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
