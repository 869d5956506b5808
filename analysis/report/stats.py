"""The statistics the claims are judged with: paired t intervals and one-sided p-values, Fieller's interval
for a ratio of paired means, and Holm's step-down correction for a family of claims.

All of them work on per-seed paired values (the seeds of two or three cells of one results folder), drop
non-finite pairs, and use Student's t with n - 1 degrees of freedom (scipy.stats.t).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95  # two-sided level of every interval shown; a one-sided test at (1 - LEVEL)/2 matches it


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def defined(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)


NO_INTERVAL = Interval(math.nan, math.nan, math.nan, 0)


def _finite(values: Sequence[float]) -> np.ndarray:
    d = np.asarray(values, dtype=float)
    return d[np.isfinite(d)]


def t_interval(diffs: Sequence[float], level: float = LEVEL) -> Interval:
    """Student's t interval of the mean of paired differences."""
    d = _finite(diffs)
    n = len(d)
    if n == 0:
        return NO_INTERVAL
    mean = float(d.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def p_at_least(diffs: Sequence[float], threshold: float) -> float:
    """One-sided p-value of H0: mean < threshold against 'the mean is at least threshold' (paired t test).
    p <= (1 - LEVEL)/2 exactly when the LEVEL t interval lies at or above the threshold. NaN below 2 pairs."""
    d = _finite(diffs)
    n = len(d)
    if n < 2:
        return math.nan
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return 0.0 if d.mean() >= threshold else 1.0
    return float(stats.t.sf((float(d.mean()) - threshold) / se, n - 1))


def p_below(diffs: Sequence[float], threshold: float) -> float:
    """One-sided p-value for 'the mean is below threshold' (the mirror of p_at_least)."""
    return p_at_least([-x for x in _finite(diffs)], -threshold)


def fieller_ratio(numerator: Sequence[float], denominator: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(a)/mean(b) for paired per-seed values a_i, b_i, with Fieller's interval: every R for which the
    paired differences a_i - R b_i have a mean that a t test at `level` does not reject as 0, i.e.

        (ā - R b̄)² <= t² (s_aa - 2 R s_ab + R² s_bb) / n,

    a quadratic in R. Bounded only when b̄ differs from 0 at that level; otherwise the set is unbounded and the
    interval is NaN (no ratio can be judged). Unlike a percentile bootstrap over 3-5 seeds, its coverage is
    exact for normal pairs."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    if n == 0 or b.mean() == 0:
        return Interval(math.nan, math.nan, math.nan, n)
    point = float(a.mean() / b.mean())
    if n < 2:
        return Interval(point, math.nan, math.nan, n)
    cov = np.cov(np.vstack([a, b]), ddof=1) / n  # covariance of the two means
    t2 = float(stats.t.ppf(0.5 + level / 2, n - 1)) ** 2
    qa = b.mean() ** 2 - t2 * cov[1, 1]
    qb = -2 * (a.mean() * b.mean() - t2 * cov[0, 1])
    qc = a.mean() ** 2 - t2 * cov[0, 0]
    disc = qb * qb - 4 * qa * qc
    if qa <= 0 or disc < 0:
        return Interval(point, math.nan, math.nan, n)
    root = math.sqrt(disc)
    return Interval(point, float((-qb - root) / (2 * qa)), float((-qb + root) / (2 * qa)), n)


def p_ratio_at_least(numerator: Sequence[float], denominator: Sequence[float], threshold: float) -> float:
    """One-sided p-value for 'mean(a)/mean(b) >= threshold' with b̄ > 0: the paired t test of a_i - threshold b_i
    (Fieller's interval is the set of thresholds this test does not reject)."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2 or b[keep].mean() <= 0:
        return math.nan
    return p_at_least((a[keep] - threshold * b[keep]).tolist(), 0.0)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control without independence): sorted
    ascending, the i-th (0-based) of m is multiplied by m - i, then made non-decreasing, capped at 1.
    A NaN p-value (a claim with too few seeds) counts in m as a p-value of 1."""
    p = [1.0 if not math.isfinite(x) else float(x) for x in p_values]
    m = len(p)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted
