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
    claims_frame,
    claims_table,
    folders_with_claims,
    label_cells,
    share_verdict,
    t_interval,
    verdict,
    verdict_below,
)
from analysis.report.stats import fieller_ratio, holm, p_at_least, p_below, p_ratio_at_least

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
    assert got["saf/sgd images/s of the runs (geometric mean of per-seed ratios)"] == REPRODUCED
    assert got["saf − sgd final-epoch SAM sharpness"] == REPRODUCED
    assert got["sam − sgd_2x (SGD, twice the epochs) accuracy"] == REPRODUCED
    assert got["sam_half (SAM, half the epochs) − sgd accuracy"] == NOT_REPRODUCED
    assert len(by) == len(table)


def test_claims_when_saf_recovers_half_the_gain() -> None:
    table = claims_frame(claims_table(_rows(gain=2.0, saf_share=0.5)))
    row = table[table["measure"] == "(saf − sgd)/(sam − sgd) accuracy"].iloc[0]
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
    share = "(sgd − saf)/(sgd − sam) final-epoch SAM sharpness"
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
    assert bench["mean"] == pytest.approx(0.99) and bench["low"] == pytest.approx(1 / 1.02)
    assert bench["high"] == pytest.approx(1.0) and bench["n"] == 7 and bench["verdict"] == REPRODUCED
    assert bench["spread"] == "IQR over 7 rounds" and "CI" not in bench["spread"]


# ---- the statistics against hand computations ----------------------------------------------------------------
def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, math.nan]) == pytest.approx([0.02, 1.0])  # a claim without a p-value still counts in m
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def _t_of_ratio(a: np.ndarray, b: np.ndarray, r: float) -> float:
    d = a - r * b
    return d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))


def test_fieller_interval_is_where_the_paired_t_test_of_a_minus_r_b_stops_rejecting() -> None:
    """Reference made another way: the two R where |t(a_i - R b_i)| equals the t quantile, by root finding on
    the raw pairs (no quadratic)."""
    from scipy.optimize import brentq

    a = np.array([1.9, 2.8, 1.2, 2.6, 1.7])
    b = np.array([1.1, 1.9, 0.8, 1.4, 1.3])
    got = fieller_ratio(a.tolist(), b.tolist())
    point = a.mean() / b.mean()
    crit = T_975_DF4
    low = brentq(lambda r: _t_of_ratio(a, b, r) - crit, 0.0, point)
    high = brentq(lambda r: _t_of_ratio(a, b, r) + crit, point, 10.0)
    assert got.mean == pytest.approx(point) and got.n == 5
    assert got.low == pytest.approx(low, rel=1e-9) and got.high == pytest.approx(high, rel=1e-9)
    # the one-sided p-value for "ratio >= low" sits exactly at 2.5%: the duality the verdicts rely on
    assert p_ratio_at_least(a.tolist(), b.tolist(), low) == pytest.approx(0.025, rel=1e-6)


def test_fieller_is_unbounded_when_the_denominator_is_not_established() -> None:
    got = fieller_ratio([1.0, 2.0, 1.5, 0.5, 1.2], [0.5, -0.6, 0.4, -0.3, 0.2])  # b's interval straddles 0
    assert math.isfinite(got.mean) and not got.defined


def test_one_sided_p_is_two_and_a_half_percent_at_the_interval_bounds() -> None:
    d = [0.1, 0.4, 0.3, 0.6, 0.2]
    ci = t_interval(d)
    assert p_at_least(d, ci.low) == pytest.approx(0.025)
    assert p_below(d, ci.high) == pytest.approx(0.025)
    assert p_at_least(d, ci.mean) == pytest.approx(0.5)


# ---- the rules, on each side of every threshold ---------------------------------------------------------------
Z = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) / math.sqrt(2.5)  # sample sd 1
HALF_95 = T_975_DF4 / math.sqrt(5)  # the 95% half-width per unit of seed sd, 5 seeds


def diffs_with_low(low: float, sd: float = 0.5) -> np.ndarray:
    """Five paired differences whose 95% t interval starts exactly at `low`."""
    return low + HALF_95 * sd + sd * Z


def table_rows(acc: dict[str, np.ndarray], sharp: dict[str, np.ndarray] | None = None,
               label_noise: float = 0.0) -> pd.DataFrame:
    out = []
    for cell, values in acc.items():
        method, _, tail = cell.partition("_")
        epochs = {"": 10, "half": 5, "2x": 20}[tail]
        for seed, v in enumerate(values):
            out.append({"method": method, "epochs": epochs, "seed": seed, "final_test_acc": v / 100,
                        "images_per_s": 1000.0, "label_noise": label_noise,
                        "final_sharpness": (sharp or {}).get(cell, np.full(5, np.nan))[seed]})
    return label_cells(pd.DataFrame(out))


SGD = np.array([80.0, 81.0, 79.0, 80.5, 79.5])
TINY = np.array([0.01, -0.02, 0.0, 0.02, -0.01])
SAM = SGD + 2.0 + TINY  # a clear gain: its p-value is tiny, so Holm leaves the SAF claim at its own level
FLAT = {"sgd": np.ones(5) + TINY, "sam": 0.5 + TINY, "saf": 0.5 - TINY}


def _verdict(table: pd.DataFrame, measure: str) -> str:
    return table[table["measure"] == measure]["verdict"].iloc[0]


@pytest.mark.parametrize("low,expected", [(-0.05, REPRODUCED), (-0.15, INCONCLUSIVE), (0.05, REPRODUCED)])
def test_saf_at_or_above_sam_within_the_margin(low: float, expected: str) -> None:
    """The 0.1-point margin: an interval starting 0.05 below SAM passes, 0.15 below does not."""
    rows = table_rows({"sgd": SGD, "sam": SAM, "saf": SAM + diffs_with_low(low)}, FLAT)
    table = claims_frame(claims_table(rows))
    row = table[table["measure"] == "saf − sam accuracy"].iloc[0]
    assert row["low"] == pytest.approx(low)
    assert row["role"].startswith("primary") and row["verdict"] == expected


def test_saf_below_sam_beyond_the_margin_is_not_reproduced_even_after_holm() -> None:
    rows = table_rows({"sgd": SGD, "sam": SAM, "saf": SAM - 3 + TINY}, FLAT)
    assert _verdict(claims_frame(claims_table(rows)), "saf − sam accuracy") == NOT_REPRODUCED


@pytest.mark.parametrize("mean,expected", [(0.3, INCONCLUSIVE), (-0.3, INCONCLUSIVE), (1.0, REPRODUCED)])
def test_an_interval_straddling_zero_is_inconclusive_whatever_the_sign_of_its_mean(mean: float, expected: str
                                                                                  ) -> None:
    """Seed sd 0.5: the 95% interval of a 0.3 mean straddles 0 (a 50% interval would not); 1.0 clears it."""
    rows = table_rows({"sgd": SGD, "sam": SGD + mean + 0.5 * Z, "saf": SGD + mean + 0.5 * Z})
    table = claims_frame(claims_table(rows))
    assert _verdict(table, "sam − sgd accuracy") == expected
    exploratory = table_rows({"sgd": SGD, "sam": SAM, "mesa": SAM + mean + 0.5 * Z})
    got = claims_frame(claims_table(exploratory))
    row = got[got["measure"] == "mesa − sam accuracy"].iloc[0]
    assert row["role"] == "exploratory" and row["verdict"] == (INCONCLUSIVE if mean != 1.0 else REPRODUCED)


def test_holm_turns_three_marginal_primary_claims_inconclusive() -> None:
    """Each primary claim alone clears its 95% interval (one-sided p about 0.02); as a family of three, Holm
    multiplies the smallest by 3, and none is reproduced."""
    gain = diffs_with_low(0.02)  # p_for a little under 0.025
    sam = SGD + gain
    saf = sam + diffs_with_low(-0.1 + 0.02)
    flat = {"sgd": np.ones(5), "saf": 1.0 - diffs_with_low(0.0002, sd=0.005), "sam": np.ones(5) - 0.5 + TINY}
    table = claims_frame(claims_table(table_rows({"sgd": SGD, "sam": sam, "saf": saf}, flat)))
    primary = table[table["role"].str.startswith("primary")]
    assert len(primary) == 3
    assert (primary["p_one_sided"] < 0.025).all() and (primary["p_holm"] > 0.025).all()
    assert set(primary["verdict"]) == {INCONCLUSIVE}
    # exploratory rows are judged alone: the same saf − sam numbers as a MESA row would be reproduced
    assert table[~table["role"].str.startswith("primary")]["p_holm"].isna().all()


def test_the_verdict_names_label_noise_and_a_refuted_mechanism() -> None:
    sharper = {"sgd": np.ones(5) + TINY, "sam": 0.5 + TINY, "saf": 1.5 + TINY, "esam": 0.2 + TINY}
    rows = table_rows({"sgd": SGD, "sam": SAM, "saf": SAM + 1 + TINY, "esam": SAM + 1 + TINY}, sharper,
                      label_noise=0.25)
    table = claims_frame(claims_table(rows))
    assert _verdict(table, "saf − sgd final-epoch SAM sharpness") == NOT_REPRODUCED
    assert _verdict(table, "saf − sam accuracy") == \
        "reproduced under label noise; mechanism (flatness) not supported"
    assert _verdict(table, "esam − sam accuracy") == "reproduced under label noise"  # ESAM is flatter
    assert _verdict(table, "sam − sgd accuracy") == "reproduced under label noise"
    clean = claims_frame(claims_table(table_rows({"sgd": SGD, "sam": SAM, "saf": SAM + 1 + TINY}, FLAT)))
    assert _verdict(clean, "saf − sam accuracy") == REPRODUCED


def test_a_flatter_method_ahead_of_a_sharper_sam_has_no_flatness_mechanism_either() -> None:
    """ESAM is flatter than SGD, but SAM is sharper: SAM's gain is not from flatness, so neither is a method's
    lead over it. With SAM's sharpness only inconclusive, ESAM's verdict stays untagged."""
    sharp_sam = {"sgd": np.ones(5) + TINY, "sam": 1.5 + TINY, "esam": 0.2 + TINY}
    table = claims_frame(claims_table(table_rows({"sgd": SGD, "sam": SAM, "esam": SAM + 1 + TINY}, sharp_sam,
                                                 label_noise=0.25)))
    assert _verdict(table, "sam − sgd final-epoch SAM sharpness") == NOT_REPRODUCED
    assert _verdict(table, "esam − sgd final-epoch SAM sharpness") == REPRODUCED
    assert _verdict(table, "esam − sam accuracy") == \
        "reproduced under label noise; mechanism (flatness) not supported"
    unsure_sam = dict(sharp_sam, sam=np.ones(5) + np.array([0.3, -0.3, 0.2, -0.2, 0.0]))
    table = claims_frame(claims_table(table_rows({"sgd": SGD, "sam": SAM, "esam": SAM + 1 + TINY}, unsure_sam,
                                                 label_noise=0.25)))
    assert _verdict(table, "sam − sgd final-epoch SAM sharpness") == INCONCLUSIVE
    assert _verdict(table, "esam − sam accuracy") == "reproduced under label noise"


@pytest.mark.parametrize("share,low,high,expected", [(0.95, 0.93, 0.96, NOT_REPRODUCED),
                                                     (0.98, 0.971, 0.99, REPRODUCED),
                                                     (0.98, 0.96, 0.99, INCONCLUSIVE)])
def test_the_throughput_threshold_is_97_percent(share: float, low: float, high: float, expected: str) -> None:
    steps = pd.DataFrame([{"model": "net", "shape": "fashionmnist", "batch_size": 128, "method": "saf",
                           "measured_at": "1", "throughput_ratio_median": share, "time_ratio_q1": 1 / high,
                           "time_ratio_q3": 1 / low, "rounds": 21}])
    rows = table_rows({"sgd": SGD, "sam": SAM, "saf": SAM}).assign(model="net", dataset="fashionmnist",
                                                                    batch_size=128)
    table = claims_frame(claims_table(rows, steps=steps))
    row = table[table["measure"].str.contains("interleaved benchmark")].iloc[0]
    assert row["verdict"] == expected and row["role"] == "benchmark (no test)"


@pytest.mark.parametrize("reference,side,expected", [
    (Interval(0.5, 0.1, 0.9, 5), "above", REPRODUCED),
    (Interval(0.5, -0.1, 1.1, 5), "above", INCONCLUSIVE),  # mean above 0, interval straddling it
    (Interval(-0.5, -0.9, -0.1, 5), "below", REPRODUCED),
    (Interval(-0.2, -0.9, 0.5, 5), "below", INCONCLUSIVE),  # mean below 0, interval straddling it
])
def test_a_share_is_judged_only_where_the_reference_change_is_established(reference: Interval, side: str,
                                                                           expected: str) -> None:
    assert share_verdict(Interval(1.5, 1.2, 1.9, 5), reference, side) == expected


def test_the_recovered_share_uses_fieller_and_fails_where_fieller_straddles_one() -> None:
    rows = table_rows({"sgd": SGD, "sam": SAM, "saf": SGD + 2.4 + 0.8 * Z})
    table = claims_frame(claims_table(rows))
    row = table[table["measure"] == "(saf − sgd)/(sam − sgd) accuracy"].iloc[0]
    ref = fieller_ratio((0.01 * (2.4 + 0.8 * Z) * 100).tolist(), (SAM - SGD).tolist())
    assert row["spread"] == "95% Fieller interval"
    assert row["low"] == pytest.approx(ref.low, rel=1e-6) and row["low"] < 1 < row["mean"]
    assert row["verdict"] == INCONCLUSIVE


def test_variants_and_half_epoch_controls_get_their_own_cells_and_claims() -> None:
    rows = table_rows({"sgd": SGD, "sam": SAM, "saf": SAM, "esam": SAM, "sgd_half": SGD, "sam_half": SAM,
                       "saf_half": SAM})
    rows["hp_beta"] = np.where(rows["method"] == "esam", 0.5, np.nan)
    extra = rows[rows["method"] == "esam"].iloc[:3].assign(hp_beta=1.0)  # an ablation on 3 seeds
    rows = label_cells(pd.concat([rows, extra]).drop(columns="cell"))
    assert set(rows["cell"]) == {"sgd", "sam", "saf", "esam", "esam[beta=1]", "sgd_half", "sam_half", "saf_half"}
    table = claims_frame(claims_table(rows))
    assert _verdict(table, "sam_half − sgd_half accuracy") == REPRODUCED
    assert _verdict(table, "saf_half − sam_half accuracy") == REPRODUCED
    assert "(v) control: SAF ≥ SAM, both at half the epochs" in set(table["claim"])
    assert table[table["measure"] == "esam[beta=1] − sam accuracy"]["n"].iloc[0] == 3


def test_runs_with_noise_drawn_per_seed_are_judged_as_their_own_folder() -> None:
    rows = table_rows({"sgd": SGD, "sam": SAM}).assign(grid="g", status="finished")
    per_seed = rows.assign(label_noise_seed="run")
    folders = folders_with_claims(pd.concat([rows.assign(label_noise_seed="fixed"), per_seed]))
    assert set(folders) == {"g", "g (noise drawn per seed)"}
    assert len(folders["g"]) == len(folders["g (noise drawn per seed)"]) == 10


def test_a_primary_claim_on_one_seed_is_untested_and_not_counted_in_holms_family() -> None:
    rows = table_rows({"sgd": SGD, "sam": SAM, "saf": SAM + diffs_with_low(0.02 - 0.1)}, FLAT)
    rows["lambda_max"] = np.where(rows["seed"] == 0, 30.0, np.nan)
    table = claims_frame(claims_table(rows))
    lam = table[table["measure"] == "saf − sgd λ_max"].iloc[0]
    assert lam["role"].startswith("primary") and lam["verdict"] == INCONCLUSIVE and math.isnan(lam["p_holm"])
    saf = table[table["measure"] == "saf − sam accuracy"].iloc[0]
    # a family of three tested claims (gain and flatness far below 0.025): the largest p stays as it is
    assert saf["p_holm"] == pytest.approx(saf["p_one_sided"]) and saf["verdict"] == REPRODUCED


def test_claims_name_a_method_as_its_spec_writes_it() -> None:
    rows = _rows(1.0, 1.0)
    rows = label_cells(pd.concat([rows.drop(columns="cell"), rows[rows["method"] == "esam"].drop(columns="cell")
                                  .assign(method="looksam")], ignore_index=True))
    claims = set(claims_frame(claims_table(rows))["claim"])
    assert "(iv) LookSAM accuracy ≥ SAM's" in claims and "(iv) ESAM accuracy ≥ SAM's" in claims
