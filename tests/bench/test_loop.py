"""bench.loop: a run's epochs and the loop benchmark (`safbench overhead --loop`) do the same work.

Two runs of one config start from the same weights and data; one trains through Run.train, the other's
method, data and scheduler go through the loop benchmark's LoopBlock in blocks that do not line up with
the epochs. Every step must see the same epoch, sample indices, inputs and learning rate, and both must
end at the same weights and sums: a loop that skipped the scheduler, shifted an epoch or dropped a batch
on either side fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bench.config import RunConfig
from bench.measure.loop import LoopBlock
from bench.run import Run
from optimizers import Method


def record_steps(method: Method) -> list[tuple[Any, ...]]:
    """Each step's (method epoch, sample indices, input checksum, learning rate), in order."""
    calls: list[tuple[Any, ...]] = []
    step = method.step

    def recorded(inputs: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None) -> Any:
        calls.append((method.epoch, indices.tolist(), float(inputs.double().sum()),
                      method.base_optimizer.param_groups[0]["lr"]))
        return step(inputs, targets, indices)

    method.step = recorded  # type: ignore[method-assign]
    return calls


def test_a_run_and_the_loop_benchmark_train_alike(tmp_path: Path) -> None:
    # SAF reading its store from epoch 1: the epoch each step is told changes the loss it trains on.
    values = dict(dataset="synthetic", model="mlp_tiny", method="saf", e_tilde=1, e_start=1, epochs=2,
                  batch_size=16, lr=0.05, train_subset=64, device="cpu", num_workers=0, progress=False)
    trained = Run(RunConfig.from_dict({**values, "out": str(tmp_path / "run")}))
    benched = Run(RunConfig.from_dict({**values, "out": str(tmp_path / "bench")}))
    benched.release()  # only its parts are used
    run_steps, bench_steps = record_steps(trained.method), record_steps(benched.method)

    assert trained.train()["status"] == "finished"
    steps = benched.data.steps_per_epoch
    block = LoopBlock(benched.method, benched.data, benched.scheduler, steps=3, first_epoch=0)
    for size in (3, 3, 2):  # the run's 2 epochs of 4 steps, one crossed inside a block
        block.run(size)

    assert steps == 4 and [c[0] for c in run_steps] == [0] * steps + [1] * steps
    assert bench_steps == run_steps
    assert benched.scheduler.last_epoch == trained.scheduler.last_epoch == 2 * steps
    for ours, theirs in zip(benched.net.state_dict().values(), trained.net.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)
    # The run sums each epoch apart, the block both together: the same numbers, added in another order.
    assert block.loop.seen == 2 * 64
    assert float(block.loop.loss_sum) == pytest.approx(64 * sum(r["train_loss"] for r in trained.rows), rel=1e-6)
    assert int(block.loop.correct) == round(64 * sum(r["train_acc"] for r in trained.rows))
