"""Cost from the runs' own curves: time to target, and the base's final accuracy the cost figure marks.

The target of a cell is the final test accuracy of its base cell (SGD, or AdamW for ViTs) of the same
model and setting, averaged over seeds. Each cell is read off its mean curve over seeds: the test
accuracy and the cumulative training time after each epoch, averaged over the seeds that have that
epoch. Its time to target is the first epoch whose mean accuracy is at or above the target, or never.
The base cell itself reaches its own final mean at its last epoch at the latest, by construction.

Curves are analysis.report.run_files.epoch_curves frames; the per-step cost measured by
`safbench overhead` is analysis.report.overhead's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from .aggregate import BASE_LABELS, method_order
from .format import MISSING, TableFile, dataset_name, is_missing, slug, write_table
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


def time_to_target(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, method, setting) with metrics: target (fraction), reached epoch
    (0-based, NaN = never), training seconds to it, the base's seconds to it and the ratio."""
    if curves.empty:
        return pd.DataFrame()
    keys = ["dataset", "model_key", "method_label", "setting"]
    mean = (curves.groupby(keys + ["epoch"], sort=False, dropna=False)[["test_acc", "train_time_cum"]]
            .mean().reset_index())
    seeds = curves.groupby(keys, sort=False, dropna=False)["seed"].nunique()
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
                   best_acc=float(g["test_acc"].max()))
        rec["reached_epoch"] = int(hit["epoch"].iloc[0]) if len(hit) else math.nan
        rec["seconds"] = float(hit["train_time_cum"].iloc[0]) if len(hit) else math.nan
        records.append(rec)
    out = pd.DataFrame(records)
    if out.empty:
        return out
    ratios = []
    for _, r in out.iterrows():
        bases = out[(out["dataset"] == r["dataset"]) & (out["model_key"] == r["model_key"])
                    & out["method_label"].isin(BASE_LABELS)]
        b = _base_for(bases, r["setting"])
        ratios.append(b["seconds"] if b is not None else math.nan)
    out["base_seconds"] = ratios
    out["time_ratio"] = out["seconds"] / out["base_seconds"]
    rank = {m: i for i, m in enumerate(method_order())}
    order = sorted(out.index, key=lambda i: (out.at[i, "dataset"], out.at[i, "model_key"],
                                             rank.get(out.at[i, "method_label"], len(rank)),
                                             out.at[i, "method_label"], out.at[i, "setting"]))
    return out.loc[order].reset_index(drop=True)


def format_time_to_target(table: pd.DataFrame) -> pd.DataFrame:
    """time_to_target as the strings of the report's table (final and best: of the mean curve)."""
    def num(x: float, fmt: str) -> str:
        return MISSING if is_missing(x) else format(x, fmt)

    cols: dict[str, list[str]] = {"Model": list(table["model_key"]), "Method": list(table["method_label"])}
    if table["setting"].astype(bool).any():
        cols["Setting"] = list(table["setting"])
    cols["Seeds"] = [str(s) for s in table["seeds"]]
    cols["Final acc (%)"] = [f"{100 * a:.2f}" for a in table["final_acc"]]
    cols["Best acc (%)"] = [f"{100 * a:.2f}" for a in table["best_acc"]]
    cols["Target: base's final acc (%)"] = [f"{100 * t:.2f} ({b})" for t, b in
                                            zip(table["target_acc"], table["base_method"], strict=True)]
    reached = table["reached_epoch"].notna()
    cols["Reached after epoch"] = [f"{int(e) + 1} of {n}" if ok else NEVER for e, n, ok in
                                   zip(table["reached_epoch"], table["epochs"], reached, strict=True)]
    cols["Training time to it (s)"] = [num(s, ".1f") for s in table["seconds"]]
    cols["× base's time"] = [num(r, ".2f") for r in table["time_ratio"]]
    return pd.DataFrame(cols)


def time_to_target_tables(rows: pd.DataFrame, out: Path) -> list[TableFile]:
    """Per dataset with metrics.csv curves and a base cell: seconds until each method first reaches the
    base optimizer's final accuracy."""
    numbers = time_to_target(epoch_curves(rows))
    written = []
    for d in dict.fromkeys(numbers.get("dataset", [])):
        t = numbers[numbers["dataset"] == d].reset_index(drop=True)
        written.append(write_table(
            out, f"time_to_target_{slug(d)}", f"{dataset_name(d)}: training time until the base's final accuracy",
            t, format_time_to_target(t), kind="cost",
            notes=["Read off each method's mean curve over seeds (metrics.csv): the first epoch whose mean test "
                   "accuracy reaches the base optimizer's final mean accuracy, and the mean cumulative training "
                   "time (epoch_time_s, evaluation excluded) up to it; never: no epoch reaches it."]))
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
