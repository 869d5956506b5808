"""bench.measure.loop: the loop benchmark crosses epochs as a run does.

That its loop is the run's own is tests/bench/test_loop.py.
"""

from __future__ import annotations

import torch

from bench.data import create_data
from bench.measure.config import OverheadConfig
from bench.measure.loop import LoopBlock, measure_loop
from bench.measure.methods import build_method
from bench.models import create_model

TINY = dict(model="mlp_tiny", batch_size=8, steps=1, repeats=3, warmup=1, num_samples=64)


def test_measure_loop_crosses_epochs_like_run_py() -> None:
    config = OverheadConfig(**{**TINY, "methods": ("saf",), "steps": 3, "repeats": 2})
    (row,) = measure_loop(config, num_train=16)  # 2 steps per epoch: the blocks cross epochs
    assert row.method == "saf" and row.loop_ratio_median > 0 and row.num_train == 16


def test_loop_block_runs_the_epoch_loop() -> None:
    data = create_data("synthetic", batch_size=4, device="cpu", seed=0, num_train=12, num_test=1)
    net = create_model("mlp_tiny", num_classes=10)
    method = build_method("saf", net, optimizer="sgd", num_samples=12, num_classes=10, precision="fp32")
    sched = torch.optim.lr_scheduler.LambdaLR(method.base_optimizer, lambda step: 1.0 / (1 + step))
    block = LoopBlock(method, data, sched, steps=4, first_epoch=5)
    block()
    block()
    assert block.epoch == 2 and method.epoch == 7  # 3 steps per epoch: 8 steps reach the third epoch
    assert block.loop.seen == 32 and sched.last_epoch == 8
    assert 0 <= int(block.loop.correct) <= 32 and float(block.loop.loss_sum) > 0
