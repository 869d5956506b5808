"""bench.measure.timing: quartiles by hand, and interleaved rounds on a machine whose speed drifts."""

from __future__ import annotations

import pytest

from bench.measure.timing import InterleavedTimer, Spread


def test_spread_quartiles_by_hand() -> None:
    s = Spread.of([100.0, 2.0, 4.0, 1.0, 3.0])
    # Sorted 1, 2, 3, 4, 100: quartiles at positions (n - 1) * 0.25 and 0.75 = 1 and 3.
    assert (s.median, s.q1, s.q3, s.min, s.max) == (3.0, 2.0, 4.0, 1.0, 100.0)
    s = Spread.of([1.0, 2.0])
    assert (s.median, s.q1, s.q3) == (1.5, 1.25, 1.75)
    assert Spread.of([5.0]) == Spread(5.0, 5.0, 5.0, 5.0, 5.0)


class FakeClock:
    """A machine whose speed changes every round: every block of round r takes cost * load[r]."""

    name = "fake"

    def __init__(self, loads: list[float]) -> None:
        self.loads, self.calls = loads, 0
        self.blocks_per_round = 3

    def sync(self) -> None:
        pass

    def time(self, fn) -> float:  # noqa: ANN001
        load = self.loads[self.calls // self.blocks_per_round]
        self.calls += 1
        return fn() * load


def test_interleaved_ratios_cancel_a_drifting_machine() -> None:
    loads = [1.0, 3.0, 0.5, 2.0, 1.2, 4.0, 0.8, 1.0]
    calls: list[str] = []

    def block(name: str, cost: float):  # noqa: ANN202
        return lambda: calls.append(name) or cost

    blocks = {"sgd": block("sgd", 1.0), "sam": block("sam", 2.0), "saf": block("saf", 1.05)}
    timer = InterleavedTimer(blocks, FakeClock(loads), seed=0)
    for _ in loads:
        timer.round()
    ratios = timer.ratios("sgd")
    assert ratios["sam"] == pytest.approx([2.0] * len(loads))  # absolute times swing 8x; ratios do not
    assert ratios["saf"] == pytest.approx([1.05] * len(loads))
    assert max(timer.samples["sgd"]) / min(timer.samples["sgd"]) == pytest.approx(8.0)
    for r, order in enumerate(timer.orders):  # every round times every block exactly once
        assert sorted(order) == ["saf", "sam", "sgd"]
        assert sorted(calls[3 * r:3 * r + 3]) == ["saf", "sam", "sgd"]
    assert len({tuple(o) for o in timer.orders}) > 1  # shuffled, not a fixed order
