"""CI regression check: the step cost of every method on a small CPU model, judged as ratios to SGD.

One pytest-benchmark measurement whose rounds are bench.measure's interleaved rounds: each round
times every method once (a block of STEPS steps) in a shuffled order, the ratio to SGD is taken
inside the round, and the median over rounds is judged. CPU timings swing +-15% between runs and
more on a shared machine; a round's methods run seconds apart and swing together, so their ratios
hold still. The JSON (--benchmark-json) carries every method's per-round times and the ratios.

Fails when (step time / SGD's): SAF > 1.10, MESA > 1.6, ESAM >= SAM, SAM or GSAM outside [1.6, 2.4],
GSAM > 1.15 SAM (its decomposition is a few parameter-sized vector ops), or LookSAM (k = 5: blocks of whole
5-step cycles, (k+1)/k = 1.2 passes plus a few vector ops per step) > 1.6 or >= SAM. No lower limit for
LookSAM: on this loaded 2-core machine its median ranged 1.05-1.44 over three runs; that it does SAM's two
passes on every k-th step and one pass otherwise is test_gsam_looksam.py's deterministic pass count.
The issue's tighter targets (SAF <= 1.05 on this CPU model; on a GPU SAF <= 1.01, MESA <= 1.20,
ESAM <= 1.45, SAM ~2) are reported in extra_info, never asserted: timings are not pass/fail material.
The deterministic counterpart, which does fail on an extra pass, is tests/optimizers/test_pass_counts.py.

Timed with one intra-op thread. With two, every parallel region ends at a barrier that waits for the
slower thread, so on a shared machine a step costs in proportion to its number of ops (a thread
descheduled for a time slice stalls every region) rather than to its arithmetic: ESAM, with as many
ops as SAM but less arithmetic, then measured 2.38x SGD against SAM's 2.01x. One thread keeps the
ratios those of the work done.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from bench.measure.config import OverheadConfig
from bench.measure.methods import REFERENCE
from bench.measure.steps import StepBenchmark
from bench.targets import STEP_TARGETS, ci_failures

METHODS = ("sgd", "sam", "esam", "saf", "mesa", "gsam", "looksam")
ROUNDS = 21
# cnn_small on 3x32x32, batch 64, one thread, channels_last: one SGD step is ~50 ms, a round ~0.7 s.
# channels_last because the CPU's NCHW max-pool forward alone is a quarter of the NCHW step: the
# forward then costs as much as the backward, unlike on a GPU, and ESAM's extra selection forward
# hides its savings (ESAM 1.9x, SAM 2.0x); with channels_last kernels the split is GPU-like.
CONFIG = OverheadConfig(model="cnn_small", shape="cifar10", methods=METHODS, batch_size=64, precision="fp32",
                        steps=2, repeats=ROUNDS, warmup=3, num_samples=50_000, channels_last=True,
                        device=torch.device("cpu"))
ISSUE_TARGETS_CPU = [t for t in STEP_TARGETS if t.device == "cpu"]  # shown, not asserted
ISSUE_TARGETS_GPU = [t for t in STEP_TARGETS if t.device == "cuda"]


def test_ci_limits() -> None:
    """The limits themselves, on made-up ratios (no timing)."""
    good = {"sgd": 1.0, "sam": 2.0, "esam": 1.5, "saf": 1.02, "mesa": 1.3, "gsam": 2.05, "looksam": 1.2}
    assert ci_failures(good) == []
    assert ci_failures({**good, "gsam": 2.35}) == ["GSAM/SGD = 2.350 > 1.15 SAM/SGD"]
    assert ci_failures({**good, "looksam": 1.65}) == ["LOOKSAM/SGD = 1.650, limit looksam ≤ 1.6 (cpu)"]
    assert ci_failures({**good, "sam": 1.6, "esam": 1.5, "gsam": 1.7, "looksam": 1.6}) == [
        "LookSAM/SGD = 1.600 >= SAM/SGD = 1.600"]  # not above 1.6, but as slow as SAM
    assert ci_failures({**good, "saf": 1.11}) == ["SAF/SGD = 1.110, limit saf ≤ 1.1 (cpu)"]
    assert ci_failures({**good, "mesa": 1.61}) == ["MESA/SGD = 1.610, limit mesa ≤ 1.6 (cpu)"]
    assert ci_failures({**good, "esam": 2.0}) == ["ESAM/SGD = 2.000 >= SAM/SGD = 2.000"]
    assert len(ci_failures({**good, "sam": 2.5})) == 1
    assert len(ci_failures({**good, "sam": 1.5, "esam": 1.4, "gsam": 1.7})) == 1


@pytest.mark.slow
def test_step_overhead(benchmark) -> None:  # noqa: ANN001 - pytest-benchmark's fixture
    bench = StepBenchmark(CONFIG)
    bench.warm_up()
    if benchmark.enabled:
        # One benchmark round = one interleaved round of all methods; pytest-benchmark's own stats
        # are then the time of a whole round, and the per-method numbers go to extra_info.
        benchmark.pedantic(bench.round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    else:  # --benchmark-disable runs a pedantic target once and records nothing: run every round in it
        benchmark.pedantic(lambda: [bench.round() for _ in range(ROUNDS)])
    rows = {r.method: r for r in bench.rows()}
    ratio = {m: rows[m].time_ratio_median for m in METHODS}
    benchmark.extra_info.update({
        "model": CONFIG.model, "batch_size": CONFIG.batch_size, "steps_per_round": CONFIG.steps,
        "rounds": len(bench.timer.samples[REFERENCE]), "torch_threads": torch.get_num_threads(),
        "step_ms_median": {m: round(rows[m].step_ms_median, 3) for m in METHODS},
        "time_ratio_median": {m: round(ratio[m], 4) for m in METHODS},
        "time_ratio_iqr": {m: [round(rows[m].time_ratio_q1, 4), round(rows[m].time_ratio_q3, 4)]
                           for m in METHODS},
        "step_ms_per_round": {m: [round(1e3 * t / bench.blocks[m].steps, 3) for t in bench.timer.samples[m]]
                              for m in METHODS},
        "issue_targets_cpu": {t.method: {"target": t.text(), "measured": round(ratio[t.method], 4),
                                         "met": t.met(ratio[t.method])} for t in ISSUE_TARGETS_CPU},
        "issue_targets_gpu_not_measured_here": [t.text() for t in ISSUE_TARGETS_GPU],
    })
    sgd_ms = statistics.median(1e3 * t / CONFIG.steps for t in bench.timer.samples[REFERENCE])
    failures = ci_failures(ratio)
    assert not failures, f"{'; '.join(failures)} (SGD step {sgd_ms:.1f} ms, ratios {ratio})"
