"""Time per Hessian-vector product: ours (analysis.measure.hessian) against PyHessian 0.1 on the same model and data.

A record, not a timed test: nothing here fails on a time. Each pytest-benchmark round times one
product of each variant in a shuffled order, so the ratios are taken between products measured
moments apart (a shared 2-core machine drifts by more than the differences measured). The per-variant
medians and ratios go to extra_info (--benchmark-json); the README quotes them.

Variants: "ours" (each batch's forward and gradient graph kept across products, the default),
"ours_recompute" (reuse_graph=False: forward + gradient + double backward per product, what ours did
before; the gap it shows is where PyHessian's lead came from) and "pyhessian" (its single-batch path,
which keeps the gradient graph of `loss.backward(create_graph=True)`).

Run: OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider tests/benchmarks/test_hessian_speed.py \\
         --benchmark-json /tmp/hvp.json
"""

from __future__ import annotations

import copy
import random
import statistics
import time

import pytest
import torch
from torch import nn

from analysis.measure import hessian

pyhessian = pytest.importorskip("pyhessian", reason="PyHessian (test extra) is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")

SAMPLES = 512
ROUNDS = 15
VARIANTS = ("ours", "ours_recompute", "pyhessian")


def small_cnn() -> nn.Module:
    """~9k parameters: two conv-BN-ReLU-pool stages (8, 16 channels) and a linear layer on 1x28x28."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
    ).eval()


@pytest.mark.slow
def test_hvp_time_ours_vs_pyhessian(benchmark) -> None:  # noqa: ANN001 - pytest-benchmark's fixture
    model = small_cnn()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(SAMPLES, 1, 28, 28, generator=g), torch.randint(0, 10, (SAMPLES,), generator=g)
    ours = hessian._HessianOperator(model, [(x, y)], None, None)
    recompute = hessian._HessianOperator(model, [(x, y)], None, None, reuse_graph=False)
    theirs = pyhessian.hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    v = torch.randn(ours.dim, generator=g)
    vs = ours.split(v)
    run = {"ours": lambda: ours(v), "ours_recompute": lambda: recompute(v),
           "pyhessian": lambda: pyhessian.utils.hessian_vector_product(theirs.gradsH, theirs.params, vs)}
    # Same products (the timing compares equal work): PyHessian's flattened Hv against ours.
    want = torch.cat([h.reshape(-1) for h in run["pyhessian"]()])
    for name in ("ours", "ours_recompute"):
        assert torch.allclose(run[name](), want, rtol=1e-4, atol=1e-6 * float(want.abs().max())), name
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    order = random.Random(0)

    def one_round() -> None:
        for name in order.sample(VARIANTS, len(VARIANTS)):
            start = time.perf_counter()
            run[name]()
            times[name].append(time.perf_counter() - start)

    if benchmark.enabled:
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    else:  # --benchmark-disable: run the rounds anyway so the record is complete
        benchmark.pedantic(lambda: [one_round() for _ in range(ROUNDS)])
    ratios = {k: statistics.median(t / p for t, p in zip(times[k], times["pyhessian"], strict=False))
              for k in VARIANTS}
    benchmark.extra_info.update({
        "model": "small_cnn (conv8-conv16-linear, BN, 1x28x28)", "samples": SAMPLES, "params": ours.dim,
        "torch_threads": torch.get_num_threads(), "rounds": len(times["ours"]),
        "hvp_s_median": {k: round(statistics.median(times[k]), 4) for k in VARIANTS},
        "time_ratio_to_pyhessian_median": {k: round(r, 3) for k, r in ratios.items()},
    })
