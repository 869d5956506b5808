"""The one training-epoch loop: what `Run._epoch` times and what `safbench overhead --loop` measures.

Both call `TrainLoop`, so the benchmark's "real loop" is the run's loop, not a copy of it that could drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from optimizers import Method

# What `fit` becomes in metrics.csv (bench.records.MetricsRow): accuracy on the clean-labelled samples, and on the
# flipped ones against their noisy and their true label.
FIT_COLUMNS = ("train_acc_clean", "train_acc_flipped_noisy", "train_acc_flipped_true")
Batch = tuple[Tensor, Tensor, Tensor]  # (sample indices, inputs, targets), as data.train_batches yields them


class TrainLoop:
    """Steps a method through batches, the scheduler after every step, and sums the loss and the correct
    predictions on the device (reading them per step would synchronise the host every step).

    Under label noise (`flipped`: a bool per training sample; `true_targets`: its true label) it also counts,
    from the logits the step returns, `fit` = [clean samples seen, of them predicted as labelled, flipped
    samples seen, of them predicted as their noisy label, of them predicted as their true label]."""

    def __init__(self, method: Method, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 flipped: Tensor | None = None, true_targets: Tensor | None = None) -> None:
        self.method, self.scheduler = method, scheduler
        self.loss_sum = torch.zeros((), device=method.device)
        self.correct = torch.zeros((), device=method.device, dtype=torch.long)
        self.seen = 0
        self.flipped, self.true_targets = flipped, true_targets
        self.fit = torch.zeros(5 if flipped is not None else 0, device=method.device, dtype=torch.long)
        if flipped is not None:
            method.watch_samples(flipped)  # a method choosing samples (ESAM) counts the flipped ones it keeps

    def begin_epoch(self, epoch: int) -> None:
        """Before the first batch of `epoch` (0-based): the method learns the epoch, the model trains."""
        self.method.set_epoch(epoch)
        self.method.model.train()

    def run(self, batches: Iterable[Batch], after_step: Callable[[], object] | None = None) -> None:
        for indices, inputs, targets in batches:
            out = self.method.step(inputs, targets, indices)
            self.scheduler.step()
            self.loss_sum += out.loss * targets.shape[0]
            predicted = out.logits.argmax(1)
            hits = predicted == targets
            self.correct += hits.sum()
            if self.flipped is not None:
                flipped = self.flipped[indices]
                clean = ~flipped
                self.fit += torch.stack([clean.sum(), (hits & clean).sum(), flipped.sum(), (hits & flipped).sum(),
                                         ((predicted == self.true_targets[indices]) & flipped).sum()])
            self.seen += targets.shape[0]
            if after_step is not None:
                after_step()
