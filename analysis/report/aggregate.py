"""From runs to cells: the labels tables join on, and the mean ± std over each cell's seeds.

`prepare` adds to the rows frame (analysis.report.load) the keys of a cell: `model_key` (the model
without "timm:"), `method_label` ("adamw" for the base method on AdamW), `family` (the paper table a
dataset belongs to) and `setting` (what sets the cell apart from others of its model and method).

`aggregate` gives the cells frame: one row per CELL_KEYS with model, method, family, n, n_diverged,
n_failed, seeds, grids; `<stat>_mean`, `<stat>_std` and `<stat>_n` for every STATS name; the config
columns; and `share` (images/s over the base optimizer's on the same workload and hardware).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

import optimizers

from .format import value_text
from .load import paper_tables

BASE_METHOD = optimizers.BASE_METHOD  # "the base optimizer alone" (SGD for ResNets, AdamW for ViTs)
BASE_LABELS = (BASE_METHOD, "adamw")  # the method_label of the base method: on AdamW it is labelled "adamw"
# Config columns that can set two cells of one (model, method) apart; the seed never does.
CONFIG_COLUMNS = ("optimizer", "epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov",
                  "label_smoothing", "schedule", "warmup_epochs", "lr_milestones", "lr_gamma", "bn_update",
                  "train_subset", "label_noise", "augment", "precision", "world_size", "device_name")
# Keep cells of different hardware apart (their images/s differ) without naming the hardware in every label.
UNLABELLED_COLUMNS = ("device_name",)
# Throughput is only comparable between runs of the same workload on the same hardware.
THROUGHPUT_MATCH = ("dataset", "model", "optimizer", "batch_size", "precision", "world_size", "device_name")
# (name in the aggregate, row column, scale): accuracies are stored as fractions, shown in %.
STATS = (("acc", "final_test_acc", 100.0), ("best_acc", "best_test_acc", 100.0),
         ("img_s", "images_per_s", 1.0), ("wall_s", "wall_s", 1.0), ("train_time_s", "train_time_s", 1.0),
         ("peak_mem", "peak_mem_bytes", 1.0), ("lambda_max", "lambda_max", 1.0),
         ("trace", "hessian_trace", 1.0))
CELL_KEYS = ("dataset", "model_key", "method_label", "setting")


def order_rank(values: Iterable[str], first: Sequence[str]) -> dict[str, int]:
    """A sort rank: `first` in its order, then the rest alphabetically."""
    rest = sorted(set(values) - set(first))
    return {v: i for i, v in enumerate(list(first) + rest)}


def method_order() -> tuple[str, ...]:
    """Display order: the base method's labels, then the registered methods in registration order (the built-in
    ones in the SAF paper's order, then plugins by name); a method not installed here sorts after them."""
    return (*BASE_LABELS, *(m for m in optimizers.methods() if m != BASE_METHOD))


def method_rank(methods: Iterable[str]) -> dict[str, int]:
    return order_rank(methods, method_order())


def _varies(values: pd.Series) -> bool:
    return values.map(value_text).nunique() > 1


def setting_labels(rows: pd.DataFrame) -> pd.Series:
    """What sets a cell apart from others of the same model and method ("" when nothing does).

    General config columns are compared across all methods of a (table family, model), so an
    epochs=10 and an epochs=200 grid stay apart for every method; method hyperparameters only
    within the method (SGD has no rho, which is not a difference).
    """
    general = [c for c in CONFIG_COLUMNS if c in rows.columns and c not in UNLABELLED_COLUMNS]
    hparams = sorted(c for c in rows.columns if c.startswith("hp_"))
    labels = pd.Series("", index=rows.index, dtype=object)
    for _, family in rows.groupby(["family", "model_key"], sort=False, dropna=False):
        varying = [c for c in general if _varies(family[c])]
        for _, cell in family.groupby("method_label", sort=False, dropna=False):
            cols = varying + [c for c in hparams if _varies(cell[c])]
            if cols:
                labels.loc[cell.index] = [
                    ", ".join(f"{c.removeprefix('hp_')}={value_text(r[c])}" for c in cols)
                    for _, r in cell.iterrows()]
    return labels


def prepare(rows: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Rows with the keys tables join on: model_key, method_label, family, setting.

    model_key drops the "timm:" prefix so ours match the paper's names; method_label is "adamw" for
    the base method on an AdamW base (the paper's ViT rows); family is the paper table a dataset
    belongs to (CIFAR-10 and -100 share Table 3), else the dataset itself.
    """
    rows = rows.copy()
    optimizer = rows["optimizer"] if "optimizer" in rows.columns else pd.Series("sgd", index=rows.index)
    rows["model_key"] = rows["model"].astype(str).str.removeprefix("timm:")
    rows["method_label"] = ["adamw" if m == BASE_METHOD and o == "adamw" else m
                            for m, o in zip(rows["method"], optimizer, strict=True)]
    family = {d: t for t, ds in paper_tables(reference).items() for d in ds}
    rows["family"] = [family.get(d, d) for d in rows["dataset"]]
    rows["setting"] = setting_labels(rows)
    return rows


def _same(a: Any, b: Any) -> bool:
    return value_text(a) == value_text(b)


def throughput_share(agg: pd.DataFrame) -> pd.Series:
    """images/s of each cell over its base optimizer's, measured on the same workload and hardware.

    The base is the base-method cell with the same config (epochs, lr, ...) when there is one, else
    the mean over base cells of the same workload (config beyond it does not change images/s).
    """
    match = [c for c in THROUGHPUT_MATCH if c in agg.columns]
    config = [c for c in CONFIG_COLUMNS if c in agg.columns]
    base = agg[agg["method"] == BASE_METHOD]
    shares = []
    for _, row in agg.iterrows():
        # .loc with a boolean list: an empty list (no base run at all) selects no rows, not no columns
        same = base.loc[[all(_same(b[c], row[c]) for c in match) for _, b in base.iterrows()]]
        twin = same.loc[[all(_same(b[c], row[c]) for c in config) for _, b in same.iterrows()]]
        speeds = (twin if len(twin) else same)["img_s_mean"].dropna()
        shares.append(row["img_s_mean"] / speeds.mean() if len(speeds) else math.nan)
    return pd.Series(shares, index=agg.index, dtype=float)


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: mean and sample std (ddof=1) over its finished seeds.

    Diverged and failed runs are counted but not averaged (a diverged run's "final" accuracy is
    that of its last finite epoch, not a result of the full schedule).
    """
    out = []
    for key, g in rows.groupby(list(CELL_KEYS), sort=False, dropna=False):
        ok = g[g["status"] == "finished"]
        rec: dict[str, Any] = dict(zip(CELL_KEYS, key, strict=True))
        rec.update(model=g["model"].iloc[0], method=g["method"].iloc[0], family=g["family"].iloc[0],
                   n=len(ok), n_diverged=int((g["status"] == "diverged").sum()),
                   n_failed=int((~g["status"].isin(["finished", "diverged"])).sum()),
                   seeds=" ".join(str(s) for s in sorted(ok["seed"].tolist())) if "seed" in ok else "",
                   grids=", ".join(sorted(set(g["grid"].astype(str)))) if "grid" in g else "")
        for name, col, scale in STATS:
            values = pd.to_numeric(ok[col], errors="coerce") * scale if col in ok else pd.Series(dtype=float)
            rec[f"{name}_mean"] = values.mean() if values.notna().any() else math.nan
            rec[f"{name}_std"] = values.std() if values.notna().sum() > 1 else math.nan
            rec[f"{name}_n"] = int(values.notna().sum())
        for c in THROUGHPUT_MATCH + CONFIG_COLUMNS:
            if c in g.columns and c not in rec:
                rec[c] = g[c].iloc[0]
        out.append(rec)
    agg = pd.DataFrame(out)
    agg["share"] = throughput_share(agg)
    rank = method_rank(agg["method_label"])
    order = sorted(agg.index, key=lambda i: (agg.at[i, "dataset"], agg.at[i, "model_key"],
                                             rank[agg.at[i, "method_label"]], agg.at[i, "setting"]))
    return agg.loc[order].reset_index(drop=True)
