"""The rule that calls a method slower, faster or unchanged between a base and a head, from per-round samples.

Paired rounds (both codes timed in alternating rounds, `bench.measure.against`): round i gives a ratio
r_i = head step time / base step time for each method. The change is the median of the r_i with a
distribution-free 95% interval (order statistics of the binomial, no assumption about the noise's shape);
the test is Wilcoxon's signed-rank test on log r_i, one-sided in each direction. As asv's `continuous`
does, a method is *slower* only when the test is significant (p < alpha) **and** the change is at least
`min_change` (r >= 1 + min_change): the test alone flags any consistent difference between two processes,
however small; the effect alone flags noise. Faster is the mirror image (r <= 1 / (1 + min_change)).

Per round the ratio to SGD is also compared: (head m / head sgd) / (base m / base sgd), the change that
`--check`'s limits would see; a slowdown common to every method leaves it at 1 while r moves. The same
rule applied to it also calls a method slower: two processes of identical code can run at speeds a few
percent apart (allocation and cache placement differ per process), which moves r for every method of a
process alike but cancels in the ratio to SGD, so a slowdown of one method is seen there with less noise.

Unpaired samples (a stored rounds file against a fresh run) use the Mann-Whitney U test on step times,
the ratio of medians, and a bootstrap interval for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.01
MIN_CHANGE = 0.05  # results/overhead/GATE.md: identical code measured 2-3% apart, so 3% raised false alarms
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Change:
    """One method's head-vs-base change and what the rule calls it."""

    method: str
    pairs: int  # paired rounds (unpaired: the smaller sample)
    ratio: float  # head / base step time (median of per-round ratios; unpaired: ratio of medians)
    low: float  # 95% interval of the ratio
    high: float
    p_slower: float  # one-sided test that head is slower
    p_faster: float
    sgd_ratio_change: float | None  # (head m/sgd) / (base m/sgd), median over rounds; None for SGD / unpaired
    sgd_ratio_low: float | None
    sgd_ratio_high: float | None
    verdict: str  # "slower", "faster" or "unchanged"
    p_sgd_ratio_slower: float | None = None  # one-sided signed-rank tests of the ratio to SGD's change
    p_sgd_ratio_faster: float | None = None


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Median and its distribution-free interval: order statistics k and n-k+1 of a Binomial(n, 1/2)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        raise ValueError("no samples")
    k = int(stats.binom.ppf((1 - confidence) / 2, n, 0.5))  # P(Bin < k) <= (1 - confidence) / 2
    k = max(k, 1)
    return float(np.median(x)), float(x[k - 1]), float(x[n - k])


def call(ratio: float, p_slower: float, p_faster: float, *, alpha: float, min_change: float) -> str:
    """The rule: significant and at least `min_change`, in either direction."""
    if p_slower < alpha and ratio >= 1 + min_change:
        return "slower"
    if p_faster < alpha and ratio <= 1 / (1 + min_change):
        return "faster"
    return "unchanged"


def _signed_rank(logs: np.ndarray, alternative: str) -> float:
    if len(logs) < 2 or not np.any(logs):
        return 1.0
    return float(stats.wilcoxon(logs, alternative=alternative, zero_method="zsplit").pvalue)


def paired(base: Mapping[str, Sequence[float]], head: Mapping[str, Sequence[float]], *, reference: str = "sgd",
           alpha: float = ALPHA, min_change: float = MIN_CHANGE) -> list[Change]:
    """Per method, from step times of the same rounds (base[m][i] and head[m][i] timed in round pair i)."""
    out = []
    for method, b in base.items():
        h = np.asarray(head[method], dtype=float)
        b = np.asarray(b, dtype=float)
        if len(h) != len(b):
            raise ValueError(f"{method}: {len(h)} head rounds but {len(b)} base rounds")
        r = h / b
        ratio, low, high = median_interval(r)
        logs = np.log(r)
        p_slow, p_fast = _signed_rank(logs, "greater"), _signed_rank(logs, "less")
        called = call(ratio, p_slow, p_fast, alpha=alpha, min_change=min_change)
        rel, p_rel = (None, None, None), (None, None)
        if method != reference and reference in base:
            rr = r / (np.asarray(head[reference], dtype=float) / np.asarray(base[reference], dtype=float))
            rel = median_interval(rr)
            p_rel = (_signed_rank(np.log(rr), "greater"), _signed_rank(np.log(rr), "less"))
            # The ratio to SGD is immune to a speed the whole process has: slower on either count is slower.
            by_rel = call(rel[0], *p_rel, alpha=alpha, min_change=min_change)
            called = "slower" if "slower" in (called, by_rel) else called if called != "unchanged" else by_rel
        out.append(Change(method, len(r), ratio, low, high, p_slow, p_fast, *rel, verdict=called,
                          p_sgd_ratio_slower=p_rel[0], p_sgd_ratio_faster=p_rel[1]))
    return out


def unpaired(base: Mapping[str, Sequence[float]], head: Mapping[str, Sequence[float]], *, alpha: float = ALPHA,
             min_change: float = MIN_CHANGE, seed: int = 0) -> list[Change]:
    """Per method, from step times of different runs: Mann-Whitney U, ratio of medians, bootstrap interval."""
    out = []
    for method, b in base.items():
        b, h = np.asarray(b, dtype=float), np.asarray(head[method], dtype=float)
        ratio = float(np.median(h) / np.median(b))
        boot = stats.bootstrap((h, b), lambda x, y, axis=-1: np.median(x, axis=axis) / np.median(y, axis=axis),
                               confidence_level=CONFIDENCE, n_resamples=2000, method="percentile",
                               rng=np.random.default_rng(seed), vectorized=True)
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        if math.isnan(low):  # every resample gave the same median (a constant sample)
            low = high = ratio
        p_slow = float(stats.mannwhitneyu(h, b, alternative="greater").pvalue)
        p_fast = float(stats.mannwhitneyu(h, b, alternative="less").pvalue)
        out.append(Change(method, min(len(b), len(h)), ratio, low, high, p_slow, p_fast, None, None, None,
                          verdict=call(ratio, p_slow, p_fast, alpha=alpha, min_change=min_change)))
    return out
