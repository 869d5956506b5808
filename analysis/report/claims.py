"""The paper's claims judged by code: paired-by-seed differences, 95% intervals and a stated verdict rule.

Every comparison pairs two cells of one results folder run with the same seeds (so each pair shares
initial weights, data order and augmentation) and looks at the per-seed differences d_i:

- interval: Student's t, mean(d) ± t(0.975, n-1) · sd(d)/√n (scipy.stats.t);
- ratios of gains ("the fraction of SAM's gain SAF recovers"): a percentile bootstrap over seeds
  (10,000 resamples of the seed pairs, fixed generator), since a ratio of means is not t-distributed.

Verdict rules (`verdict`), for a claim that the difference is at least `threshold`:
reproduced when the whole interval lies at or above the threshold, not reproduced when it lies wholly
below, inconclusive when it straddles it or when fewer than 2 seeds pair up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
BOOTSTRAP_RESAMPLES = 10_000
# "At or above SAM": non-inferiority within this many accuracy points (a tenth of a point, about the
# seed-to-seed spread of a single Fashion-MNIST run), so that equal accuracy counts as "at".
ACCURACY_MARGIN = 0.1
SAF_THROUGHPUT_SHARE = 0.97  # the paper: SAF at 97.6-99.3% of SGD's throughput; we test >= 97%


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def defined(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)


def t_interval(diffs: Sequence[float], level: float = 0.95) -> Interval:
    """Student's t interval of the mean of paired differences."""
    d = np.asarray([x for x in diffs if math.isfinite(x)], dtype=float)
    n = len(d)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_ratio(numerator: Sequence[float], denominator: Sequence[float], level: float = 0.95,
                    seed: int = 0) -> Interval:
    """mean(numerator)/mean(denominator) with a percentile-bootstrap interval over the paired seeds."""
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    keep = np.isfinite(num) & np.isfinite(den)
    num, den = num[keep], den[keep]
    n = len(num)
    if n == 0 or den.mean() == 0:
        return Interval(math.nan, math.nan, math.nan, n)
    point = float(num.mean() / den.mean())
    if n < 2:
        return Interval(point, math.nan, math.nan, n)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    dens = den[picks].mean(axis=1)
    ratios = num[picks].mean(axis=1)[dens != 0] / dens[dens != 0]
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(low), float(high), n)


def verdict(interval: Interval, threshold: float = 0.0) -> str:
    """Claim: the quantity is >= threshold. Reproduced if the interval is wholly at or above it."""
    if not interval.defined:
        return INCONCLUSIVE
    if interval.low >= threshold:
        return REPRODUCED
    if interval.high < threshold:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def verdict_below(interval: Interval, threshold: float = 0.0) -> str:
    """Claim: the quantity is < threshold (e.g. 'flatter': a sharpness difference below 0)."""
    if not interval.defined:
        return INCONCLUSIVE
    if interval.high < threshold:
        return REPRODUCED
    if interval.low >= threshold:
        return NOT_REPRODUCED
    return INCONCLUSIVE


# ---- from result rows to claims ------------------------------------------------------------------------
def paired(rows: pd.DataFrame, a: str, b: str, column: str) -> pd.DataFrame:
    """Per-seed values of `column` for cells `a` and `b` (rows' `cell` column), on the seeds both have."""
    pick = rows[rows["cell"].isin([a, b])].pivot_table(index="seed", columns="cell", values=column, aggfunc="first")
    if a not in pick or b not in pick:
        return pd.DataFrame(columns=[a, b])
    return pick[[a, b]].dropna()


def _diff(rows: pd.DataFrame, a: str, b: str, column: str, scale: float = 1.0) -> Interval:
    p = paired(rows, a, b, column)
    return t_interval(((p[a] - p[b]) * scale).tolist()) if len(p) else Interval(math.nan, math.nan, math.nan, 0)


def _fraction(rows: pd.DataFrame, method: str, base: str, reference: str, column: str) -> Interval:
    """(method - base)/(reference - base) per seed-paired means: the share of the reference's change recovered."""
    cells = rows[rows["cell"].isin([method, base, reference])]
    wide = cells.pivot_table(index="seed", columns="cell", values=column, aggfunc="first")
    if not {method, base, reference} <= set(wide.columns):
        return Interval(math.nan, math.nan, math.nan, 0)
    wide = wide[[method, base, reference]].dropna()
    return bootstrap_ratio((wide[method] - wide[base]).tolist(), (wide[reference] - wide[base]).tolist())


@dataclass(frozen=True)
class Claim:
    claim: str  # what the paper says
    measure: str  # what we compared
    interval: Interval
    unit: str
    verdict: str
    rule: str


def step_throughput(steps: pd.DataFrame | None, method: str, *, model: str, dataset: str, batch_size: int
                    ) -> Interval | None:
    """`method`'s share of SGD's throughput from the newest interleaved step benchmark of this model, data shape
    and batch (`safbench overhead`): the median over rounds, with the interquartile range as its interval."""
    if steps is None or steps.empty:
        return None
    pick = steps[(steps["model"] == model) & (steps["shape"] == dataset) & (steps["batch_size"] == batch_size)
                 & (steps["method"] == method)]
    if pick.empty:
        return None
    row = pick.sort_values("measured_at").iloc[-1] if "measured_at" in pick else pick.iloc[-1]
    share = float(row["throughput_ratio_median"])
    return Interval(share, 1.0 / float(row["time_ratio_q3"]), 1.0 / float(row["time_ratio_q1"]), int(row["rounds"]))


def claims_table(rows: pd.DataFrame, *, base: str = "sgd", sam: str = "sam", saf: str = "saf",
                 others: Sequence[str] = ("mesa", "esam", "gsam", "looksam"), sgd_double: str | None = "sgd_2x",
                 sam_half: str | None = "sam_half", steps: pd.DataFrame | None = None) -> list[Claim]:
    """The paper's claims on one results folder. `rows` has one row per run with columns `cell` (the
    method, or an equal-compute label), `seed`, `final_test_acc`, `images_per_s`, `final_sharpness`,
    `lambda_max`, `hessian_trace`."""
    out: list[Claim] = []
    acc = "final_test_acc"
    present = set(rows["cell"])
    others = tuple(m for m in others if m in present)
    sgd_double = sgd_double if sgd_double in present else None
    sam_half = sam_half if sam_half in present else None
    gain = _diff(rows, sam, base, acc, 100)
    out.append(Claim("SAM beats SGD (the regime has a gain to give)", f"{sam} − {base} accuracy", gain, "points",
                     verdict(gain, 0.0), "CI above 0"))
    methods = tuple(m for m in (saf, *others) if m in present)
    for method in methods:
        d = _diff(rows, method, sam, acc, 100)
        out.append(Claim(f"(i{'v' if method != saf else ''}) {method.upper()} accuracy ≥ SAM's",
                         f"{method} − {sam} accuracy", d, "points", verdict(d, -ACCURACY_MARGIN),
                         f"CI ≥ −{ACCURACY_MARGIN}"))
        share = _fraction(rows, method, base, sam, acc)
        out.append(Claim(f"{method.upper()} recovers SAM's gain over SGD", f"({method} − {base})/({sam} − {base}) "
                         "accuracy, bootstrap", share, "fraction", verdict(share, 1.0) if gain.low > 0
                         else INCONCLUSIVE, "CI ≥ 1 (needs SAM's gain CI > 0)"))
    ratio_rows = rows.assign(log_img_s=np.log(rows["images_per_s"].astype(float)))
    for method, threshold in ((saf, SAF_THROUGHPUT_SHARE),) if saf in present else ():
        log_ratio = _diff(ratio_rows, method, base, "log_img_s")
        share = Interval(*(math.exp(v) if math.isfinite(v) else math.nan
                           for v in (log_ratio.mean, log_ratio.low, log_ratio.high)), log_ratio.n)
        out.append(Claim(f"(ii) {method.upper()} throughput ≥ {threshold:.0%} of SGD's",
                         f"{method}/{base} images/s (geometric mean of per-seed ratios)", share, "share",
                         verdict(share, threshold), f"CI ≥ {threshold}"))
        first = rows.iloc[0]
        bench = None if steps is None else step_throughput(
            steps, method, model=str(first["model"]), dataset=str(first["dataset"]),
            batch_size=int(first["batch_size"]))
        if bench is not None:
            out.append(Claim(f"(ii) {method.upper()} throughput ≥ {threshold:.0%} of SGD's",
                             f"{method}/{base} step throughput, interleaved benchmark (median, IQR over "
                             f"{bench.n} rounds)", bench, "share", verdict(bench, threshold),
                             f"IQR ≥ {threshold}"))
    for column, name in (("final_sharpness", "final-epoch SAM sharpness"), ("lambda_max", "λ_max"),
                         ("hessian_trace", "Hessian trace"),
                         ("final_adaptive_sharpness", "final-epoch adaptive (ASAM) sharpness"),
                         ("lambda_max_true_labels", "λ_max, true labels"),
                         ("lambda_max_flipped", "λ_max, flipped images")):
        if column not in rows or rows[column].isna().all():
            continue
        reference = _diff(rows, sam, base, column)
        if reference.n:
            out.append(Claim("SAM flatter than SGD (the flatness to give)", f"{sam} − {base} {name}", reference, name,
                             verdict_below(reference, 0.0), "CI below 0"))
        for method in methods:
            d = _diff(rows, method, base, column)
            if not d.n:
                continue  # not measured for this method
            tag = "(iii)" if method == saf else "(iv)"
            out.append(Claim(f"{tag} {method.upper()} flatter than SGD", f"{method} − {base} {name}", d, name,
                             verdict_below(d, 0.0), "CI below 0"))
            frac = _fraction(rows, method, base, sam, column)
            # A share of SAM's reduction means something only where SAM's reduction is itself established.
            out.append(Claim(f"{tag} {method.upper()} gets SAM's flatness", f"({base} − {method})/({base} − {sam}) "
                             f"{name}, bootstrap", frac, "fraction", verdict(frac, 1.0) if reference.high < 0
                             else INCONCLUSIVE, "CI ≥ 1 (needs SAM's reduction CI below 0)"))
    if sgd_double is not None:
        d = _diff(rows, sam, sgd_double, acc, 100)
        out.append(Claim("(v) SAM's gain survives equal compute", f"{sam} − {sgd_double} (SGD, twice the epochs) "
                         "accuracy", d, "points", verdict(d, 0.0), "CI above 0"))
    if sam_half is not None:
        d = _diff(rows, sam_half, base, acc, 100)
        out.append(Claim("(v) SAM at SGD's cost beats SGD", f"{sam_half} (SAM, half the epochs) − {base} accuracy",
                         d, "points", verdict(d, 0.0), "CI above 0"))
    return out


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": c.claim, "measure": c.measure, "mean": c.interval.mean, "ci_low": c.interval.low,
                          "ci_high": c.interval.high, "seeds": c.interval.n, "unit": c.unit, "rule": c.rule,
                          "verdict": c.verdict} for c in claims])


def label_cells(rows: pd.DataFrame) -> pd.DataFrame:
    """Add `cell`: the method, or `<method>_2x` / `<method>_half` for the equal-compute baselines, whose
    epochs are twice or half the folder's usual (most common) epoch count."""
    rows = rows.copy()
    usual = int(rows["epochs"].mode().iloc[0])

    def label(method: str, epochs: int) -> str:
        if epochs == usual:
            return method
        if epochs == 2 * usual:
            return f"{method}_2x"
        if 2 * epochs == usual:
            return f"{method}_half"
        return f"{method}_{epochs}ep"

    rows["cell"] = [label(m, int(e)) for m, e in zip(rows["method"], rows["epochs"], strict=True)]
    return rows


def folders_with_claims(rows: pd.DataFrame, base: str = "sgd", sam: str = "sam") -> dict[str, pd.DataFrame]:
    """Each results folder (rows' `grid`) that ran both the base method and SAM, its finished rows labelled."""
    out = {}
    finished = rows[rows["status"] == "finished"] if "status" in rows else rows
    for grid, part in finished.groupby("grid", sort=True):
        if {base, sam} <= set(part["method"]):
            out[str(grid)] = label_cells(part)
    return out


def format_claims(frame: pd.DataFrame) -> pd.DataFrame:
    """The claims table as shown: the estimate with its interval in one column."""

    def shown(r: pd.Series) -> str:
        digits = 2 if r["unit"] in ("points",) else 3
        if not math.isfinite(r["mean"]):
            return "—"
        interval = f" [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]" if math.isfinite(r["ci_low"]) else ""
        return f"{r['mean']:+.{digits}f}{interval}" if r["unit"] == "points" else f"{r['mean']:.{digits}f}{interval}"

    return pd.DataFrame({"claim": frame["claim"], "measured": frame["measure"],
                         "estimate [95% CI]": [shown(r) for _, r in frame.iterrows()], "seeds": frame["seeds"],
                         "rule": frame["rule"], "verdict": frame["verdict"]})
