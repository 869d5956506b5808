"""How the benchmarks time work: clocks, interleaved rounds of timed blocks, and the spread of the results.

CUDA events on a GPU (the device is synchronised before each block, so queued work of the previous
block is never charged to the next), `time.perf_counter` on the CPU. Blocks are timed round-robin:
every round times each block once, in a freshly shuffled order, so a machine whose speed drifts (other
jobs, clocks, heat) moves all blocks of a round together and ratios taken inside a round cancel it.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


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


class Block:
    """A unit of timed work: `run(n)` does n steps (warm-up calls it directly), a call does `steps`."""

    steps: int

    def run(self, steps: int) -> None:
        raise NotImplementedError

    def __call__(self) -> None:
        self.run(self.steps)


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
