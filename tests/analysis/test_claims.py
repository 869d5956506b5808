"""The claim verdicts: intervals computed by hand, rules checked just inside and just outside their thresholds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.report.claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Interval,
    bootstrap_ratio,
    claims_frame,
    claims_table,
    label_cells,
    t_interval,
    verdict,
    verdict_below,
)

T_975_DF4 = 2.7764451051977987  # Student's t 0.975 quantile, 4 degrees of freedom (printed tables)


def test_t_interval_is_the_textbook_one() -> None:
    d = [0.1, 0.4, 0.3, 0.6, 0.2]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    got = t_interval(d)
    assert got.mean == pytest.approx(mean)
    assert got.low == pytest.approx(mean - T_975_DF4 * sd / math.sqrt(5))
    assert got.high == pytest.approx(mean + T_975_DF4 * sd / math.sqrt(5))
    assert not t_interval([0.3]).defined and t_interval([]).n == 0


@pytest.mark.parametrize("low,high,expected", [(0.0, 1.0, REPRODUCED), (-1e-9, 1.0, INCONCLUSIVE),
                                               (-2.0, -1e-9, NOT_REPRODUCED), (-1.0, 0.0, INCONCLUSIVE)])
def test_verdict_at_least(low: float, high: float, expected: str) -> None:
    assert verdict(Interval((low + high) / 2, low, high, 5), 0.0) == expected


@pytest.mark.parametrize("low,high,expected", [(-2.0, -1e-9, REPRODUCED), (-1.0, 0.0, INCONCLUSIVE),
                                               (0.0, 1.0, NOT_REPRODUCED)])
def test_verdict_below(low: float, high: float, expected: str) -> None:
    assert verdict_below(Interval((low + high) / 2, low, high, 5), 0.0) == expected


def test_undefined_intervals_are_inconclusive() -> None:
    assert verdict(Interval(5.0, math.nan, math.nan, 1)) == INCONCLUSIVE
    assert verdict_below(Interval(-5.0, math.nan, math.nan, 1)) == INCONCLUSIVE


def test_bootstrap_ratio_of_exactly_proportional_pairs_has_no_spread() -> None:
    den = [1.0, 2.0, 0.5, 1.5]
    got = bootstrap_ratio([0.5 * x for x in den], den)
    assert got.mean == pytest.approx(0.5) and got.low == pytest.approx(0.5) and got.high == pytest.approx(0.5)
    noisy = bootstrap_ratio([0.4, 1.1, 0.2, 0.9], den)
    assert noisy.low < noisy.mean < noisy.high


def _rows(gain: float, saf_share: float, seeds: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    out = []
    for s in range(seeds):
        sgd = 0.85 + 0.002 * rng.standard_normal()
        sam = sgd + gain / 100 + 0.0005 * rng.standard_normal()
        for method, epochs, acc, speed, sharp in (
                ("sgd", 10, sgd, 1000.0, 1.0), ("sam", 10, sam, 500.0, 0.4),
                ("saf", 10, sgd + saf_share * (sam - sgd), 990.0, 0.6), ("mesa", 10, sgd, 850.0, 0.9),
                ("esam", 10, sam, 600.0, 0.5), ("sgd", 20, sgd + 0.001, 1000.0, 1.1),
                ("sam", 5, sgd - 0.01, 500.0, 0.5)):
            out.append({"method": method, "epochs": epochs, "seed": s, "final_test_acc": acc,
                        "images_per_s": speed * (1 + 0.001 * rng.standard_normal()),
                        "final_sharpness": sharp + 0.01 * rng.standard_normal()})
    return label_cells(pd.DataFrame(out))


def test_equal_compute_cells_are_labelled_by_their_epochs() -> None:
    rows = _rows(1.0, 1.0)
    assert set(rows["cell"]) == {"sgd", "sam", "saf", "mesa", "esam", "sgd_2x", "sam_half"}


def test_claims_on_a_clear_case() -> None:
    table = claims_frame(claims_table(_rows(gain=1.0, saf_share=1.0)))
    by = {(r.claim, r.measure): r.verdict for r in table.itertuples()}
    got = dict(zip(table["measure"], table["verdict"], strict=True))
    assert got["sam − sgd accuracy"] == REPRODUCED
    assert got["saf − sam accuracy"] == REPRODUCED  # equal within the margin
    assert got["mesa − sam accuracy"] == NOT_REPRODUCED  # one point below SAM on every seed
    assert got["saf/sgd images/s (geometric mean of per-seed ratios)"] == REPRODUCED
    assert got["saf − sgd final-epoch SAM sharpness"] == REPRODUCED
    assert got["sam − sgd_2x (SGD, twice the epochs) accuracy"] == REPRODUCED
    assert got["sam_half (SAM, half the epochs) − sgd accuracy"] == NOT_REPRODUCED
    assert len(by) == len(table)


def test_claims_when_saf_recovers_half_the_gain() -> None:
    table = claims_frame(claims_table(_rows(gain=2.0, saf_share=0.5)))
    row = table[table["measure"].str.startswith("(saf − sgd)/(sam − sgd) accuracy")].iloc[0]
    assert row["mean"] == pytest.approx(0.5, abs=0.05) and row["verdict"] == NOT_REPRODUCED
    assert table[table["measure"] == "saf − sam accuracy"].iloc[0]["verdict"] == NOT_REPRODUCED


def test_a_pilot_folder_with_sgd_and_sam_only_gets_the_gain_claim() -> None:
    rows = _rows(1.0, 1.0)
    pilot = rows[rows["cell"].isin(["sgd", "sam"])]
    table = claims_frame(claims_table(pilot))
    assert list(table["measure"]) == ["sam − sgd accuracy", "sam − sgd final-epoch SAM sharpness"]
    assert list(table["verdict"]) == [REPRODUCED, REPRODUCED]


def test_a_share_of_sams_flatness_is_judged_only_where_sam_is_flatter() -> None:
    rows = _rows(1.0, 1.0)
    flat = claims_frame(claims_table(rows))
    share = "(sgd − saf)/(sgd − sam) final-epoch SAM sharpness, bootstrap"
    assert flat[flat["measure"] == share]["verdict"].iloc[0] != INCONCLUSIVE  # SAM 0.4 vs SGD 1.0: established
    same = rows.copy()
    is_sam = same["cell"] == "sam"
    same.loc[is_sam, "final_sharpness"] = same.loc[same["cell"] == "sgd", "final_sharpness"].to_numpy() + \
        np.array([0.02, -0.03, 0.01, -0.02, 0.03])
    table = claims_frame(claims_table(same))
    assert table[table["measure"] == "sam − sgd final-epoch SAM sharpness"]["verdict"].iloc[0] == INCONCLUSIVE
    assert table[table["measure"] == share]["verdict"].iloc[0] == INCONCLUSIVE


def test_throughput_claim_from_the_newest_matching_step_benchmark() -> None:
    steps = pd.DataFrame([
        # an older measurement, another model and another batch size must all be ignored
        {"model": "net", "shape": "fashionmnist", "batch_size": 128, "method": "saf", "measured_at": "20260101T0",
         "throughput_ratio_median": 0.5, "time_ratio_q1": 1.9, "time_ratio_q3": 2.1, "rounds": 5},
        {"model": "net", "shape": "fashionmnist", "batch_size": 128, "method": "saf", "measured_at": "20260102T0",
         "throughput_ratio_median": 0.99, "time_ratio_q1": 1.0, "time_ratio_q3": 1.02, "rounds": 7},
        {"model": "other", "shape": "fashionmnist", "batch_size": 128, "method": "saf", "measured_at": "20260103T0",
         "throughput_ratio_median": 0.2, "time_ratio_q1": 5.0, "time_ratio_q3": 5.0, "rounds": 5},
        {"model": "net", "shape": "fashionmnist", "batch_size": 64, "method": "saf", "measured_at": "20260103T0",
         "throughput_ratio_median": 0.2, "time_ratio_q1": 5.0, "time_ratio_q3": 5.0, "rounds": 5}])
    rows = _rows(1.0, 1.0).assign(model="net", dataset="fashionmnist", batch_size=128)
    table = claims_frame(claims_table(rows, steps=steps))
    bench = table[table["measure"].str.contains("interleaved benchmark")].iloc[0]
    assert bench["mean"] == pytest.approx(0.99) and bench["ci_low"] == pytest.approx(1 / 1.02)
    assert bench["ci_high"] == pytest.approx(1.0) and bench["seeds"] == 7 and bench["verdict"] == REPRODUCED
