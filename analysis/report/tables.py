"""The report's accuracy tables: the paper's tables with ours beside them, one table per dataset, the runs overview.

Each table is a numbers frame (written as csv) and its strings (`format_*`, written as md and tex);
both are pure functions of the cells frame (analysis.report.aggregate) and the reference frame.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench import io
from bench.records import TABLES_DIR

from .aggregate import method_rank, order_rank
from .format import (
    BEST_ACC,
    MISSING,
    TableFile,
    dataset_name,
    fmt_diff,
    fmt_pm,
    fmt_seeds,
    fmt_share,
    fmt_sig,
    fmt_speed,
    fmt_time,
    pairs,
    render_markdown,
    slug,
    value_text,
    write_table,
)
from .load import PAPER_SOURCE, paper_tables

CELLS_CSV = "cells.csv"  # the cells frame (analysis.report.aggregate), beside the tables
RUNS_CSV = "runs.csv"  # the prepared rows frame, one row per run


def _reference_rows(reference: pd.DataFrame, table: str) -> pd.DataFrame:
    own = reference["source"].astype(str).str.startswith(PAPER_SOURCE)
    return reference[own & (reference["table"].astype(str) == table)]


def paper_table(agg: pd.DataFrame, reference: pd.DataFrame, table: str) -> pd.DataFrame:
    """The paper's `table` in its layout: rows model x method (x setting), ours beside the paper's.

    Rows are every (model, method) of the paper's table plus every cell of ours on its datasets;
    per dataset: n, acc mean/std (%), paper acc (and its ±), acc_diff = ours - paper (points),
    images/s mean/std, share of the base optimizer, and the paper's images/s and share.
    """
    ref = _reference_rows(reference, table)
    datasets = list(dict.fromkeys(ref["dataset"].astype(str)))
    ours = agg[agg["dataset"].isin(datasets)]
    keys = list(dict.fromkeys(zip(ours["model_key"], ours["method_label"], ours["setting"], strict=True)))
    covered = {(m, k) for m, k, _ in keys}
    keys += [(m, k, "") for m, k in dict.fromkeys(zip(ref["model"], ref["method"], strict=True))
             if (m, k) not in covered]
    model_rank = order_rank([k[0] for k in keys], list(dict.fromkeys(ref["model"].astype(str))))
    methods = method_rank(k[1] for k in keys)
    keys.sort(key=lambda k: (model_rank[k[0]], methods[k[1]], k[2]))
    records = []
    for model, method, setting in keys:
        rec: dict[str, Any] = {"model": model, "method": method, "setting": setting}
        for d in datasets:
            mine = ours[(ours["dataset"] == d) & (ours["model_key"] == model)
                        & (ours["method_label"] == method) & (ours["setting"] == setting)]
            theirs = ref[(ref["dataset"] == d) & (ref["model"] == model) & (ref["method"] == method)]
            m = mine.iloc[0] if len(mine) else None
            p = theirs.iloc[0] if len(theirs) else None
            rec[f"{d}_n"] = int(m["n"]) if m is not None else 0
            rec[f"{d}_n_diverged"] = int(m["n_diverged"]) if m is not None else 0
            rec[f"{d}_n_failed"] = int(m["n_failed"]) if m is not None else 0
            rec[f"{d}_acc_mean"] = m["acc_mean"] if m is not None else math.nan
            rec[f"{d}_acc_std"] = m["acc_std"] if m is not None else math.nan
            rec[f"{d}_paper_acc"] = float(p["top1_acc"]) if p is not None else math.nan
            rec[f"{d}_paper_acc_std"] = float(p["top1_std"]) if p is not None else math.nan
            rec[f"{d}_acc_diff"] = rec[f"{d}_acc_mean"] - rec[f"{d}_paper_acc"]
            rec[f"{d}_img_s_mean"] = m["img_s_mean"] if m is not None else math.nan
            rec[f"{d}_img_s_std"] = m["img_s_std"] if m is not None else math.nan
            rec[f"{d}_share"] = m["share"] if m is not None else math.nan
            rec[f"{d}_paper_img_s"] = float(p["images_per_s"]) if p is not None else math.nan
            rec[f"{d}_paper_share"] = float(p["throughput_vs_base"]) if p is not None else math.nan
            rec[f"{d}_paper_notes"] = str(p["notes"]) if p is not None else ""
        records.append(rec)
    return pd.DataFrame(records)


def outside_reference(reference: pd.DataFrame, dataset: str, tables: dict[str, list[str]]) -> pd.DataFrame:
    """Published rows for `dataset` that no paper table of ours shows (e.g. SAM's Fashion-MNIST rows)."""
    rows = reference[reference["dataset"] == dataset]
    own = rows["source"].astype(str).str.startswith(PAPER_SOURCE)
    return rows[~(own & rows["table"].isin(list(tables)))].reset_index(drop=True)


def dataset_table(agg: pd.DataFrame, reference: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Every cell of ours on `dataset`: accuracy, throughput, cost, λ_max and trace (mean and std).

    ref_acc / acc_diff_ref join an outside reference row of the same model and method, if any.
    """
    tables = paper_tables(reference)
    ref = outside_reference(reference, dataset, tables)
    ours = agg[agg["dataset"] == dataset].copy()
    model_rank = order_rank(ours["model_key"], [])
    methods = method_rank(ours["method_label"])
    keys = zip(ours["model_key"], ours["method_label"], ours["setting"], strict=True)
    ours["_rank"] = [(model_rank[m], methods[k], s) for m, k, s in keys]
    ours = ours.sort_values("_rank").drop(columns="_rank")
    records = []
    for _, r in ours.iterrows():
        rec = {"model": r["model_key"], "method": r["method_label"], "setting": r["setting"],
               "n": int(r["n"]), "n_diverged": int(r["n_diverged"]), "n_failed": int(r["n_failed"]),
               "seeds": r["seeds"]}
        for name in ("acc", "best_acc", "img_s", "wall_s", "train_time_s", "lambda_max", "trace"):
            rec[f"{name}_mean"], rec[f"{name}_std"] = r[f"{name}_mean"], r[f"{name}_std"]
        for name in ("lambda_max", "trace"):  # measured on fewer seeds than the accuracy, often
            rec[f"{name}_n"] = int(r[f"{name}_n"])
        rec["share"] = r["share"]
        match = ref[(ref["model"] == r["model_key"]) & (ref["method"] == r["method_label"])]
        first = match.iloc[0] if len(match) else None
        rec["ref_acc"] = float(first["top1_acc"]) if first is not None else math.nan
        rec["ref_acc_std"] = float(first["top1_std"]) if first is not None else math.nan
        rec["ref_source"] = str(first["source"]) if first is not None else ""
        rec["acc_diff_ref"] = rec["acc_mean"] - rec["ref_acc"]
        rec["grids"] = r["grids"]
        records.append(rec)
    return pd.DataFrame(records)


def _with_n(text: str, n: int, row_n: int) -> str:
    """A cell measured on fewer seeds than its row's accuracy says on how many."""
    return f"{text} (n={n})" if 0 < n != row_n else text


def format_paper_table(table: pd.DataFrame) -> pd.DataFrame:
    """paper_table's numbers as the strings of the markdown/LaTeX table (one column group per dataset)."""
    datasets = [c.removesuffix("_acc_mean") for c in table.columns if c.endswith("_acc_mean")]
    cols: dict[str, list[str]] = {"Model": list(table["model"]), "Method": list(table["method"])}
    if table["setting"].astype(bool).any():
        cols["Setting"] = list(table["setting"])
    for d in datasets:
        name = dataset_name(d)
        t = {k.removeprefix(f"{d}_"): table[k] for k in table.columns if k.startswith(f"{d}_")}
        cols[f"{name} seeds"] = [fmt_seeds(*v) if any(v) else MISSING
                                 for v in zip(t["n"], t["n_diverged"], t["n_failed"], strict=True)]
        cols[f"{name} acc (%)"] = pairs(fmt_pm, t["acc_mean"], t["acc_std"])
        cols[f"{name} paper acc (%)"] = pairs(fmt_pm, t["paper_acc"], t["paper_acc_std"])
        cols[f"{name} Δ acc"] = [fmt_diff(x) for x in t["acc_diff"]]
        cols[f"{name} img/s"] = pairs(fmt_speed, t["img_s_mean"], t["img_s_std"])
        cols[f"{name} share of base"] = [fmt_share(x) for x in t["share"]]
        cols[f"{name} paper img/s"] = [fmt_speed(x) for x in t["paper_img_s"]]
        cols[f"{name} paper share"] = [fmt_share(x) for x in t["paper_share"]]
    return pd.DataFrame(cols)


def paper_notes(table: pd.DataFrame) -> list[str]:
    """The reference CSV's notes for the rows shown ("resnet50 / esam, ImageNet: accuracy quoted ...")."""
    notes = []
    for c in [c for c in table.columns if c.endswith("_paper_notes")]:
        d = c.removesuffix("_paper_notes")
        for _, r in table.iterrows():
            if r[c]:
                notes.append(f"{r['model']} / {r['method']}, {dataset_name(d)}: {r[c]}")
    return notes


def format_dataset_table(table: pd.DataFrame) -> pd.DataFrame:
    """dataset_table's numbers as display strings; λ_max, trace and reference columns only when present."""
    cols: dict[str, list[str]] = {"Model": list(table["model"]), "Method": list(table["method"])}
    if table["setting"].astype(bool).any():
        cols["Setting"] = list(table["setting"])
    counts = zip(table["n"], table["n_diverged"], table["n_failed"], strict=True)
    cols["Seeds"] = [fmt_seeds(*v) for v in counts]
    cols["Test acc (%)"] = pairs(fmt_pm, table["acc_mean"], table["acc_std"])
    cols[BEST_ACC] = pairs(fmt_pm, table["best_acc_mean"], table["best_acc_std"])
    cols["Images/s"] = pairs(fmt_speed, table["img_s_mean"], table["img_s_std"])
    cols["Share of base"] = [fmt_share(x) for x in table["share"]]
    cols["Train time (s)"] = pairs(fmt_time, table["train_time_s_mean"], table["train_time_s_std"])
    for name, title in (("lambda_max", "λ_max"), ("trace", "Hessian trace")):
        if table[f"{name}_mean"].notna().any():
            cols[title] = [_with_n(text, k, n) for text, k, n in zip(
                pairs(fmt_sig, table[f"{name}_mean"], table[f"{name}_std"]), table[f"{name}_n"], table["n"],
                strict=True)]
    if table["ref_acc"].notna().any():
        cols["Ref. acc (%)"] = pairs(fmt_pm, table["ref_acc"], table["ref_acc_std"])
        cols["Δ vs ref."] = [fmt_diff(x) for x in table["acc_diff_ref"]]
    return pd.DataFrame(cols)


def format_reference(ref: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Source": list(ref["source"]), "Table": list(ref["table"]), "Model": list(ref["model"]),
        "Method": list(ref["method"]),
        "Acc (%)": pairs(fmt_pm, ref["top1_acc"], ref["top1_std"]),
        "Images/s": [fmt_speed(x) for x in ref["images_per_s"]], "Notes": list(ref["notes"])})


def has_ours(table: pd.DataFrame) -> pd.Series:
    """Rows of a paper_table with at least one run of ours (finished, diverged or failed) on any dataset."""
    counts = [c for c in table.columns if c.endswith(("_n", "_n_diverged", "_n_failed"))]
    if not counts:
        return pd.Series(False, index=table.index)
    return table[counts].fillna(0).sum(axis=1) > 0


def tables_without_ours(agg: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """The paper's tables on whose datasets we have no run, as "Table 1 (ImageNet)"."""
    return [f"{t} ({', '.join(dataset_name(d) for d in ds)})" for t, ds in paper_tables(reference).items()
            if not agg["dataset"].isin(ds).any()]


def runs_overview(rows: pd.DataFrame) -> pd.DataFrame:
    """What was measured, one line per (results folder, dataset, model): methods, seeds, epochs, runs."""
    recs = []
    keys = [k for k in ("grid", "dataset", "model_key") if k in rows.columns]
    for key, g in rows.groupby(keys, sort=True, dropna=False):
        rec = dict(zip(["Folder", "Dataset", "Model"], key, strict=False))
        rec["Dataset"] = dataset_name(str(rec.get("Dataset", "")))
        methods = list(dict.fromkeys(g["method_label"]))
        rank = method_rank(methods)
        rec["Methods"] = ", ".join(sorted(methods, key=lambda m: rank[m]))
        rec["Seeds"] = " ".join(value_text(x) for x in sorted(g["seed"].dropna().unique())) if "seed" in g else MISSING
        epochs = g["epochs"].dropna().unique() if "epochs" in g else []
        rec["Epochs"] = ", ".join(value_text(e) for e in sorted(epochs)) or MISSING
        status = g["status"].value_counts()
        rec["Runs"] = f"{len(g)}" + (" (" + ", ".join(f"{n} {st}" for st, n in status.items()) + ")"
                                     if set(status.index) != {"finished"} else "")
        devices = g["device_name"].dropna().astype(str).unique() if "device_name" in g else []
        rec["Device"] = "; ".join(devices) or MISSING
        recs.append(rec)
    return pd.DataFrame(recs)


def build_tables(rows: pd.DataFrame, agg: pd.DataFrame, reference: pd.DataFrame,
                 out: Path) -> list[TableFile]:
    """Write the paper's tables, one table per dataset, and the machine-readable aggregates.

    A paper table shows (md, tex) only its rows with at least one run of ours; its csv keeps every row
    with the published numbers. A paper table without any run of ours is not written (see
    `tables_without_ours`); the full published tables stay in the reference CSV.
    """
    tables = paper_tables(reference)
    written = []
    for name in tables:
        numbers = paper_table(agg, reference, name)
        shown = numbers[has_ours(numbers)]
        if shown.empty:
            continue
        title = f"Paper {name} ({', '.join(dataset_name(d) for d in tables[name])}): ours vs the paper"
        written.append(write_table(out, f"paper_{slug(name)}", title, numbers, format_paper_table(shown),
                                   notes=paper_notes(shown), kind="paper"))
    datasets = list(dict.fromkeys(rows["dataset"].astype(str)))
    for d in sorted(datasets, key=lambda d: (d in {x for ds in tables.values() for x in ds}, d)):
        numbers = dataset_table(agg, reference, d)
        extra = ""
        ref = outside_reference(reference, d, tables)
        if len(ref):
            extra = "\nOutside reference (published numbers, different setups):\n\n" + \
                render_markdown(format_reference(ref))
        grids = sorted({g for gs in numbers["grids"] for g in str(gs).split(", ") if g})
        title = f"{dataset_name(d)}: every method (from {', '.join(grids)})"
        written.append(write_table(out, f"dataset_{slug(d)}", title, numbers, format_dataset_table(numbers),
                                   extra_md=extra, kind="dataset"))
    io.write_csv(out / TABLES_DIR / CELLS_CSV, agg)
    io.write_csv(out / TABLES_DIR / RUNS_CSV, rows)
    return written
