"""Cost from the runs' own curves: time to target, and the base's final accuracy the cost figure marks.

The target of a cell is the final test accuracy of its base cell (SGD, or AdamW for ViTs) of the same
model and setting, averaged over seeds. Each cell is read off its mean curve over seeds: the test
accuracy after each epoch, averaged over the seeds that have that epoch. It reaches the target at the first
epoch whose mean accuracy is at or above it, or never. The base cell itself reaches its own final mean at
its last epoch at the latest, by construction.

The time to that epoch is priced by the interleaved step benchmark of the cell's model, data shape and
batch (`safbench overhead`, the newest file that timed the method): epochs × steps per epoch × the
benchmark's SGD step time × the method's step-time ratio to SGD, the ratio taken as 1 in the epochs before
the method's extra work starts (MethodSpec.active_from: SAF and MESA are SGD until E_start). Runs that ran
beside other jobs would otherwise time the machine's load. Without a benchmark for the cell and its base,
or for a cell whose hyperparameters that set a step's work (HParam.sets_cost: ESAM's beta and gamma, LookSAM's
k) differ from the defaults the benchmark timed, the runs' own cumulative epoch_time_s is used; the table says
which.

Curves are analysis.report.run_files.epoch_curves frames; the per-step cost measured by
`safbench overhead` is analysis.report.overhead's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

import optimizers
from bench.data.sampling import steps_per_epoch

from .aggregate import BASE_LABELS, method_order
from .format import BEST_ACC, MISSING, TableFile, dataset_name, is_missing, slug, write_table
from .run_files import epoch_curves

NEVER = "never"


def _base_for(bases: pd.DataFrame, setting: str) -> pd.Series | None:
    """The base cell for a cell of `setting`: the same setting, else the one whose setting is contained
    in it (a method's own hyperparameters extend the general ones), else the only base there is."""
    if bases.empty:
        return None
    same = bases[bases["setting"] == setting]
    if len(same):
        return same.iloc[0]
    parts = set(filter(None, str(setting).split(", ")))
    inside = bases[[set(filter(None, str(s).split(", "))) <= parts for s in bases["setting"]]]
    if len(inside) == 1:
        return inside.iloc[0]
    return bases.iloc[0] if len(bases) == 1 else None


KEYS = ["dataset", "model_key", "method_label", "setting"]
MEASURED = "runs' epoch_time_s"


def benchmark_pricing(rows: pd.DataFrame, steps: pd.DataFrame | None) -> dict[tuple, dict[str, Any]]:
    """Per cell (KEYS): the seconds of one epoch of SGD steps by the step benchmark, the method's step-time
    ratio to SGD, the epoch its extra work starts, and the benchmark file; cells without a benchmark are absent."""
    if steps is None or steps.empty or rows.empty:
        return {}
    out = {}
    for key, g in rows.groupby(KEYS, sort=False, dropna=False):
        r = g.iloc[0]
        pick = steps[(steps["model"] == r["model"]) & (steps["shape"] == r["dataset"])
                     & (steps["batch_size"] == r["batch_size"])]
        mine = pick[pick["method"] == r["method"]].sort_values("measured_at")
        if mine.empty:
            continue
        row = mine.iloc[-1]
        sgd = pick[(pick["method"] == "sgd") & (pick["file"] == row["file"])]
        if sgd.empty:
            continue
        spec = optimizers.method_spec(str(r["method"]))
        hp = {h.name: r.get(f"hp_{h.name}", h.default) for h in spec.hparams}
        hp = {k: (v if not is_missing(v) else spec.hparam(k).default) for k, v in hp.items()}
        if any(h.sets_cost and hp[h.name] != h.default for h in spec.hparams):
            continue  # the benchmark timed the defaults: LookSAM at k = 1 costs SAM's step, not LookSAM's
        batches = steps_per_epoch(int(r["num_samples"]), int(r["batch_size"]), int(r.get("world_size", 1) or 1))
        out[key] = {"epoch_s": batches * float(sgd.iloc[0]["step_ms_median"]) / 1000,
                    "ratio": float(row["time_ratio_median"]), "active_from": int(spec.active_from(hp)),
                    "file": str(row["file"])}
    return out


def _priced(epochs: pd.Series, price: dict[str, Any]) -> pd.Series:
    """Cumulative benchmark seconds after each epoch (0-based numbers in `epochs`)."""
    per_epoch = [price["epoch_s"] * (1.0 if e < price["active_from"] else price["ratio"]) for e in epochs]
    return pd.Series(per_epoch, index=epochs.index).cumsum()


def time_to_target(curves: pd.DataFrame, pricing: dict[tuple, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per (dataset, model, method, setting) with metrics: target (fraction), reached epoch
    (0-based, NaN = never), seconds to it and the base's seconds to it, and their ratio, priced by the step
    benchmark where `pricing` (benchmark_pricing) has both the cell and its base, else by the runs' own
    epoch times (`time_source` says which; `measured_seconds` always holds the runs' own)."""
    if curves.empty:
        return pd.DataFrame()
    pricing = pricing or {}
    keys = KEYS
    mean = (curves.groupby(keys + ["epoch"], sort=False, dropna=False)[["test_acc", "train_time_cum"]]
            .mean().reset_index())
    seeds = curves.groupby(keys, sort=False, dropna=False)["seed"].nunique()
    best = curves.groupby(keys + ["seed"], sort=False, dropna=False)["test_acc"].max() \
        .groupby(level=list(range(len(keys))), sort=False, dropna=False).mean()
    finals = []
    for key, g in mean.groupby(keys, sort=False, dropna=False):
        last = g.sort_values("epoch").iloc[-1]
        finals.append({**dict(zip(keys, key, strict=True)), "final_acc": last["test_acc"],
                       "epochs": int(last["epoch"]) + 1})
    finals = pd.DataFrame(finals)
    records: list[dict[str, Any]] = []
    for key, g in mean.groupby(keys, sort=False, dropna=False):
        rec = dict(zip(keys, key, strict=True))
        bases = finals[(finals["dataset"] == rec["dataset"]) & (finals["model_key"] == rec["model_key"])
                       & finals["method_label"].isin(BASE_LABELS)]
        base = _base_for(bases, rec["setting"])
        if base is None:
            continue
        g = g.sort_values("epoch")
        hit = g[g["test_acc"] >= base["final_acc"]]
        rec.update(base_method=base["method_label"], target_acc=base["final_acc"], seeds=int(seeds[key]),
                   epochs=int(g["epoch"].max()) + 1, final_acc=float(g["test_acc"].iloc[-1]),
                   best_acc=float(best[key]))
        rec["reached_epoch"] = int(hit["epoch"].iloc[0]) if len(hit) else math.nan
        rec["measured_seconds"] = float(hit["train_time_cum"].iloc[0]) if len(hit) else math.nan
        base_key = tuple(base[k] for k in keys)
        price = pricing.get(key) if base_key in pricing else None
        rec["time_source"] = f"step benchmark ({price['file']})" if price else MEASURED
        rec["seconds"] = float(_priced(g["epoch"], price)[hit.index[0]]) if price and len(hit) else \
            rec["measured_seconds"]
        records.append(rec)
    out = pd.DataFrame(records)
    if out.empty:
        return out
    ratios = []
    for _, r in out.iterrows():
        bases = out[(out["dataset"] == r["dataset"]) & (out["model_key"] == r["model_key"])
                    & out["method_label"].isin(BASE_LABELS)]
        b = _base_for(bases, r["setting"])
        same_source = b is not None and b["time_source"] == r["time_source"]
        ratios.append(b["seconds"] if same_source else math.nan)
    out["base_seconds"] = ratios
    out["time_ratio"] = out["seconds"] / out["base_seconds"]
    rank = {m: i for i, m in enumerate(method_order())}
    order = sorted(out.index, key=lambda i: (out.at[i, "dataset"], out.at[i, "model_key"],
                                             rank.get(out.at[i, "method_label"], len(rank)),
                                             out.at[i, "method_label"], out.at[i, "setting"]))
    return out.loc[order].reset_index(drop=True)


def format_time_to_target(table: pd.DataFrame) -> pd.DataFrame:
    """time_to_target as the strings of the report's table."""
    def num(x: float, fmt: str) -> str:
        return MISSING if is_missing(x) else format(x, fmt)

    cols: dict[str, list[str]] = {"Model": list(table["model_key"]), "Method": list(table["method_label"])}
    if table["setting"].astype(bool).any():
        cols["Setting"] = list(table["setting"])
    cols["Seeds"] = [str(s) for s in table["seeds"]]
    cols["Final acc (%), mean over seeds"] = [f"{100 * a:.2f}" for a in table["final_acc"]]
    cols[BEST_ACC] = [f"{100 * a:.2f}" for a in table["best_acc"]]
    cols["Target: base's final acc (%)"] = [f"{100 * t:.2f} ({b})" for t, b in
                                            zip(table["target_acc"], table["base_method"], strict=True)]
    reached = table["reached_epoch"].notna()
    cols["Reached after epoch"] = [f"{int(e) + 1} of {n}" if ok else NEVER for e, n, ok in
                                   zip(table["reached_epoch"], table["epochs"], reached, strict=True)]
    cols["Time to it (s)"] = [num(s, ".1f") for s in table["seconds"]]
    cols["× base's time"] = [num(r, ".2f") for r in table["time_ratio"]]
    cols["Time from"] = list(table["time_source"])
    return pd.DataFrame(cols)


def time_to_target_tables(rows: pd.DataFrame, out: Path, steps: pd.DataFrame | None = None) -> list[TableFile]:
    """Per dataset with metrics.csv curves and a base cell: seconds until each method first reaches the
    base optimizer's final accuracy."""
    numbers = time_to_target(epoch_curves(rows), benchmark_pricing(rows, steps))
    written = []
    for d in dict.fromkeys(numbers.get("dataset", [])):
        t = numbers[numbers["dataset"] == d].reset_index(drop=True)
        written.append(write_table(
            out, f"time_to_target_{slug(d)}", f"{dataset_name(d)}: training time until the base's final accuracy",
            t, format_time_to_target(t), kind="cost",
            notes=["Read off each method's mean curve over seeds (metrics.csv): the first epoch whose mean test "
                   "accuracy reaches the base optimizer's final mean accuracy; never: no epoch reaches it. "
                   "Time: those epochs' steps priced by the interleaved step benchmark of the model (SGD's step "
                   "time × the method's step-time ratio, 1 before the method's extra work starts), not the "
                   "runs' wall-clock on a shared machine; where no benchmark matches, the runs' mean cumulative "
                   "epoch_time_s (evaluation excluded). `Time from` says which."]))
    return written


def cost_targets(curves: pd.DataFrame, points: pd.DataFrame) -> dict[str, float]:
    """model -> the base optimizer's final test accuracy (mean over seeds of its last epoch), when there is
    exactly one base cell of the model (else the dashed line would be ambiguous).

    `points`: finished rows without curves (final_test_acc), used when the model has no base curve."""
    out: dict[str, float] = {}
    for model in dict.fromkeys(list(curves.get("model_key", [])) + list(points.get("model_key", []))):
        c = curves[(curves["model_key"] == model) & curves["method_label"].isin(BASE_LABELS)] if len(curves) \
            else curves
        if len(c) and len(set(zip(c["method_label"], c["setting"], strict=True))) == 1:
            last = c[c["epoch"] == c["epoch"].max()]
            out[model] = float(last["test_acc"].mean())
            continue
        p = points[(points["model_key"] == model) & points["method_label"].isin(BASE_LABELS)] if len(points) \
            else points
        if len(p) and len(set(zip(p["method_label"], p["setting"], strict=True))) == 1 and not len(c):
            out[model] = float(p["final_test_acc"].mean())
    return out
