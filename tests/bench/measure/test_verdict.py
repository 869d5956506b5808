"""The gate's rule (bench.measure.verdict) on synthetic per-round samples: no timing anywhere.

Rounds are drawn as a machine speed that drifts from round to round (shared by both sides of a pair, as
the alternating rounds make it), times per-method lognormal noise; a slowdown multiplies a side's times.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.measure import verdict

METHODS = ("sgd", "saf", "sam")
STEP = {"sgd": 0.040, "saf": 0.041, "sam": 0.080}


def rounds(seed: int, n: int = 60, noise: float = 0.03, slow: dict[str, float] | None = None,
           ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    drift = np.exp(np.cumsum(rng.normal(0, 0.02, n)))  # the machine's speed, round by round
    slow = slow or {}
    base = {m: list(STEP[m] * drift * np.exp(rng.normal(0, noise, n))) for m in METHODS}
    head = {m: list(STEP[m] * slow.get(m, 1.0) * drift * np.exp(rng.normal(0, noise, n))) for m in METHODS}
    return base, head


def verdicts(changes: list[verdict.Change]) -> dict[str, str]:
    return {c.method: c.verdict for c in changes}


def test_identical_distributions_pass() -> None:
    called = [verdicts(verdict.paired(*rounds(seed))) for seed in range(200)]
    alarms = sum(any(v != "unchanged" for v in c.values()) for c in called)
    assert alarms <= 2  # alpha 0.01 per side and method, and the 5% minimum on top: next to none


def test_a_shifted_method_fails_alone() -> None:
    changes = {c.method: c for c in verdict.paired(*rounds(1, slow={"saf": 1.08}))}
    assert {m: c.verdict for m, c in changes.items()} == {"sgd": "unchanged", "saf": "slower", "sam": "unchanged"}
    saf = changes["saf"]
    assert saf.low < 1.08 < saf.high and saf.p_slower < 1e-6
    assert saf.sgd_ratio_low < 1.08 < saf.sgd_ratio_high  # SAF / SGD moved too
    assert changes["sgd"].sgd_ratio_change is None


def test_a_common_shift_fails_every_method_though_ratios_to_sgd_hold() -> None:
    changes = verdict.paired(*rounds(2, slow=dict.fromkeys(METHODS, 1.06)))
    assert set(verdicts(changes).values()) == {"slower"}
    for c in changes:
        if c.method != "sgd":
            assert c.sgd_ratio_low < 1.0 < c.sgd_ratio_high  # invisible to the ratio to SGD


def test_faster_is_called_and_a_significant_change_below_the_minimum_is_not() -> None:
    assert verdicts(verdict.paired(*rounds(3, slow={"sam": 0.9})))["sam"] == "faster"
    quiet = {c.method: c for c in verdict.paired(*rounds(4, n=200, noise=0.005, slow={"saf": 1.015}),
                                                 min_change=0.03)}
    assert quiet["saf"].p_slower < 1e-6 and quiet["saf"].verdict == "unchanged"  # real, but under 3%
    loud = verdict.paired(*rounds(4, n=200, noise=0.005, slow={"saf": 1.015}), min_change=0.01)
    assert verdicts(loud)["saf"] == "slower"


def test_a_large_change_without_evidence_is_not_called() -> None:
    base, head = rounds(5, n=6, noise=0.2, slow={"saf": 1.2})
    # Six pairs cannot reach p < 0.01 in a one-sided signed-rank test (the least p is 1/64).
    assert verdicts(verdict.paired(base, head))["saf"] == "unchanged"


@pytest.mark.parametrize(("n", "ranks"), [(20, (6, 15)), (50, (18, 33)), (9, (2, 8))])
def test_median_interval_is_the_binomial_order_statistics(n: int, ranks: tuple[int, int]) -> None:
    # Tables of the sign-test interval for the median (e.g. Conover, Practical Nonparametric Statistics):
    # n = 20: x(6)..x(15); n = 50: x(18)..x(33); n = 9: x(2)..x(8), each covering >= 95%.
    values = list(range(1, n + 1))[::-1]
    median, low, high = verdict.median_interval(values)
    assert (low, high) == ranks and median == np.median(values)


def test_median_interval_covers_the_median_as_promised() -> None:
    rng = np.random.default_rng(0)
    covered = [lo <= 0.0 <= hi for lo, hi in
               (verdict.median_interval(rng.standard_cauchy(31))[1:] for _ in range(2000))]
    assert 0.94 <= np.mean(covered) <= 0.99


def test_unpaired_samples_of_a_stored_run() -> None:
    rng = np.random.default_rng(6)
    base = {"sgd": list(0.04 * np.exp(rng.normal(0, 0.03, 40))), "saf": list(0.041 * np.exp(rng.normal(0, 0.03, 40)))}
    same = {m: list(np.asarray(v) * np.exp(rng.normal(0, 0.03, 40))) for m, v in base.items()}
    assert set(verdicts(verdict.unpaired(base, same)).values()) == {"unchanged"}
    slow = {"sgd": same["sgd"], "saf": list(np.asarray(same["saf"]) * 1.10)}
    changes = {c.method: c for c in verdict.unpaired(base, slow)}
    assert changes["saf"].verdict == "slower" and changes["sgd"].verdict == "unchanged"
    assert changes["saf"].low < 1.10 < changes["saf"].high


def test_paired_refuses_rounds_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="saf: 3 head rounds but 2 base rounds"):
        verdict.paired({"saf": [1.0, 1.0]}, {"saf": [1.0, 1.0, 1.0]})


def test_a_slowdown_hidden_by_a_faster_head_process_is_seen_in_the_ratio_to_sgd() -> None:
    # The head's process runs everything 6% faster (memory placement), SAF's step got 6% slower in it:
    # SAF's absolute time is unchanged, its ratio to SGD is not.
    changes = {c.method: c for c in verdict.paired(*rounds(7, slow={"sgd": 0.94, "saf": 0.94 * 1.06,
                                                                     "sam": 0.94}), min_change=0.03)}
    assert 0.97 < changes["saf"].ratio < 1.03 and changes["saf"].sgd_ratio_change > 1.04
    assert changes["saf"].verdict == "slower" and changes["sam"].verdict == "faster"
    # 10% faster process, SAF 5% slower in it: faster in absolute time, still slower than it was against SGD
    changes = {c.method: c for c in verdict.paired(*rounds(8, slow={"sgd": 0.9, "saf": 0.9 * 1.05, "sam": 0.9}),
                                                   min_change=0.03)}
    assert changes["saf"].ratio < 0.97 and changes["saf"].verdict == "slower"
