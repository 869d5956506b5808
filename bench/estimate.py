"""What a cell will cost, from measured unit times: the arithmetic of `--estimate`, and nothing it measures.

A cell's work is counted from its config (epochs, steps per epoch, evaluation batches, sharpness batches,
Hessians) and priced with the unit times that bench.estimate_probe measured for its combination of data
shape, model, method, batch and precision. Pure functions of plain numbers, so tests inject the times.

    train     = steps/epoch x (inactive epochs x inactive step + active epochs x step), + loading share
    eval      = epochs x evaluation batches (test and validation sets) x evaluation batch
    sharpness = epochs x ceil(sharpness_samples / batch) x sharpness batch          (--sharpness)
    hessian   = Hessians x HVPs x HVP over hessian_samples                          (--hessian[-epochs])

Wall-clock over several devices follows the gpus launcher: each worker takes the next cell in grid order
when it frees up (list scheduling), so the wall-clock is the latest worker's finish.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import optimizers

from .config import RunConfig

# `safbench hessian`'s defaults as the run hook calls them: top-3 eigenvalues (iterations until a relative
# change below 1e-3, at most 100 each; a few dozen in all on the runs committed) and 50 Hutchinson probes.
HESSIAN_HVPS = 50 + 3 * 15
INACTIVE_SHARE_TIMED = 0.1  # a method's inactive epochs are timed apart when they are at least this share


@dataclass(frozen=True)
class UnitTimes:
    """Seconds per unit of work for one combination, already scaled to the cell's real batch sizes."""

    step_s: float  # one training step at the method's fully active epoch
    step_inactive_s: float | None = None  # before it (SAF/MESA before e_start), if timed apart
    load_s: float = 0.0  # data loading per step that the step does not hide (resident: augmentation)
    load_overlaps: bool = False  # streamed: workers load while the step runs, a step costs max(step, load)
    eval_batch_s: float = 0.0  # one evaluation batch (eval_batch_size), forward only
    sharpness_batch_s: float = 0.0  # one sharpness batch (batch_size): gradient and two losses
    hvp_s: float = 0.0  # one Hessian-vector product over hessian_samples


def hook_hvps(config: RunConfig) -> int | None:
    """Hessian-vector products the installed Hessian run hook says it spends on `config` (its `hvps`: the
    algorithm, k, trace probes and label views it will use), or None without such a hook."""
    if not (config.hessian or config.hessian_epochs):
        return 0
    from .plugins import RUN_HOOKS, loaded

    count = getattr(loaded(RUN_HOOKS).get("hessian"), "hvps", None)
    return int(count(config)) if callable(count) else None


@dataclass(frozen=True)
class Workload:
    """How much of each unit one cell does (from its config and its dataset's sizes)."""

    epochs: int
    steps_per_epoch: int
    inactive_epochs: int
    eval_batches: int
    sharpness_batches: int
    hessians: int
    hessian_hvps: int | None = None  # the installed Hessian hook's own count for this config (else HESSIAN_HVPS each)

    @classmethod
    def of(cls, config: RunConfig, *, train_samples: int, test_samples: int, world_size: int = 1) -> Workload:
        n = min(train_samples, config.train_subset) if config.train_subset else train_samples
        spec = optimizers.method_spec(config.method)
        active = min(spec.active_from(config.hparams()), config.epochs)
        eval_bs = config.eval_batch_size or config.batch_size
        return cls(
            epochs=config.epochs,
            steps_per_epoch=n // (config.batch_size * world_size),
            inactive_epochs=active,
            # the test set, and the validation set of --val-size, both evaluated after every epoch
            eval_batches=math.ceil(math.ceil(test_samples / world_size) / eval_bs)
            + math.ceil(math.ceil(getattr(config, "val_size", 0) / world_size) / eval_bs),
            sharpness_batches=math.ceil(min(config.sharpness_samples, n) / config.batch_size) if config.sharpness
            else 0,
            hessians=(1 if config.hessian else 0) + len([e for e in config.hessian_epochs if e < config.epochs]),
            hessian_hvps=hook_hvps(config))

    @property
    def inactive_share(self) -> float:
        return self.inactive_epochs / self.epochs


@dataclass(frozen=True)
class CellEstimate:
    train_s: float
    eval_s: float
    sharpness_s: float
    hessian_s: float
    done_fraction: float = 0.0  # of the cell's epochs already in its run directory

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.sharpness_s + self.hessian_s

    @property
    def done_s(self) -> float:
        return self.total_s * self.done_fraction

    @property
    def left_s(self) -> float:
        return self.total_s - self.done_s


def estimate_cell(work: Workload, unit: UnitTimes, *, done_fraction: float = 0.0) -> CellEstimate:
    """The cell's estimated seconds, per kind of work."""
    def step(compute: float) -> float:
        return max(compute, unit.load_s) if unit.load_overlaps else compute + unit.load_s

    inactive = unit.step_inactive_s if unit.step_inactive_s is not None else unit.step_s
    per_epoch_active = work.steps_per_epoch * step(unit.step_s)
    per_epoch_inactive = work.steps_per_epoch * step(inactive)
    train = work.inactive_epochs * per_epoch_inactive + (work.epochs - work.inactive_epochs) * per_epoch_active
    return CellEstimate(
        train_s=train,
        eval_s=work.epochs * work.eval_batches * unit.eval_batch_s,
        sharpness_s=work.epochs * work.sharpness_batches * unit.sharpness_batch_s,
        hessian_s=(work.hessians * HESSIAN_HVPS if work.hessian_hvps is None else work.hessian_hvps) * unit.hvp_s,
        done_fraction=done_fraction)


@dataclass(frozen=True)
class Totals:
    total_s: float
    done_s: float
    left_s: float


def totals(estimates: Sequence[CellEstimate]) -> Totals:
    return Totals(sum(e.total_s for e in estimates), sum(e.done_s for e in estimates),
                  sum(e.left_s for e in estimates))


def wall_clock(left_s: Sequence[float], workers: int) -> float:
    """Finish time of `workers` workers each taking the next cell in order when free (cells of 0 s skipped)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    free_at = [0.0] * workers
    for seconds in left_s:
        if seconds > 0:
            heapq.heappush(free_at, heapq.heappop(free_at) + seconds)
    return max(free_at)


def human(seconds: float) -> str:
    """3.2 s, 14 min, 5.3 h, 2.1 d: two significant figures, the unit chosen to keep the number small."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86_400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"
