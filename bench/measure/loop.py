"""The loop benchmark: images/s of `method.step` on pre-made batches against the run's real epoch loop.

The real side is bench.loop.TrainLoop, the loop `Run._epoch` times (device-resident batches with their
augmentation, the scheduler's step, metric sums), on synthetic data shaped like the measured dataset.
Both sides of a method are timed in the same interleaved rounds (bench.measure.timing).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterator
from itertools import islice
from typing import Any

import torch
from tqdm import tqdm

from optimizers import Method

from ..config import RunConfig
from ..data import create_data
from ..loop import Batch, TrainLoop
from ..schedules import lr_scheduler
from .batches import BATCH_POOL, BatchPool
from .config import OverheadConfig
from .memory import release_memory
from .methods import active_epoch
from .rows import LoopRow
from .steps import StepBlock
from .timing import Block, Clock, InterleavedTimer, Spread


class LoopBlock(Block):
    """`steps` steps of the run's TrainLoop over the data's epochs, the method's epochs counted from
    `first_epoch`; a new epoch starts inside the block when the previous one runs out, as it starts
    inside a run's wall time."""

    def __init__(self, method: Method, data: Any, scheduler: Any, steps: int, *, first_epoch: int) -> None:
        self.loop = TrainLoop(method, scheduler)
        self.data, self.steps, self.first_epoch = data, steps, first_epoch
        self.epoch = -1  # the data's epoch being stepped through
        self._batches = self._epochs()

    def _epochs(self) -> Iterator[Batch]:
        while True:
            self.epoch += 1
            self.loop.begin_epoch(self.first_epoch + self.epoch)
            yield from self.data.train_batches(self.epoch)

    def run(self, steps: int) -> None:
        self.loop.run(islice(self._batches, steps))


def measure_loop(config: OverheadConfig, *, num_train: int, progress: bool = False) -> list[LoopRow]:
    """For each method: step-only images/s on pre-made batches vs the real loop, in interleaved rounds."""
    config.validate(reference=False)  # each method is compared with itself here
    shape, device = config.data_shape, config.device
    data = create_data("synthetic", batch_size=config.batch_size, device=device, seed=config.seed,
                       shape=shape.image, num_classes=shape.num_classes, num_train=num_train,
                       num_test=1, channels_last=config.channels_last)
    net = config.initial_model()
    # The step-only side gets a few real batches of the same data, made before timing, and SAF's
    # indices sweep the whole epoch as in the loop (cycling two batches' rows would stay in cache).
    premade = list(islice(data.train_batches(0), BATCH_POOL))
    plan = getattr(data, "epoch_plan", None)
    sweep = plan(0)[0] if plan is not None else torch.stack([b[0] for b in premade])
    pool = BatchPool([b[1] for b in premade], [b[2] for b in premade], sweep)
    clock = Clock(device)
    rows = []
    for name in config.methods:
        step, loop = (config.build(name, net, num_samples=data.num_samples) for _ in range(2))
        first = active_epoch(step)
        step.set_epoch(first)
        scheduler = lr_scheduler(RunConfig(epochs=200), loop.base_optimizer, data.steps_per_epoch)
        blocks = {"step": StepBlock(step, pool, config.steps),
                  "loop": LoopBlock(loop, data, scheduler, config.steps, first_epoch=first)}
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
        del step, loop, blocks, timer
        release_memory(device)
    return rows
