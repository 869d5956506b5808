"""bench.measure.batches: the synthetic device-resident batches and their index sweep."""

from __future__ import annotations

import torch

from bench.measure.batches import SHAPES, BatchPool

CPU = torch.device("cpu")


def test_batch_pool_sweeps_every_sample_once() -> None:
    pool = BatchPool.synthetic(SHAPES["cifar10"], 8, 100, CPU, seed=0)
    assert pool.index_batches.shape == (12, 8)  # drop-last: 100 // 8 full batches
    seen = torch.cat([pool.batch(s)[0] for s in range(12)])
    assert seen.unique().numel() == 96 and int(seen.min()) >= 0 and int(seen.max()) < 100
    idx, x, y = pool.batch(12)
    assert torch.equal(idx, pool.index_batches[0]) and x.shape == (8, 3, 32, 32) and y.shape == (8,)


def test_fashionmnist_shape_feeds_one_channel_28x28_images() -> None:
    pool = BatchPool.synthetic(SHAPES["fashionmnist"], 8, 100, CPU, seed=0)
    _, x, y = pool.batch(0)
    assert x.shape == (8, 1, 28, 28) and int(y.max()) < 10
