"""The report's tables, built only from stored result rows and the reference CSV.

Data flow: result folders -> flat rows (one per run, `load_rows`) -> `prepare` (labels) ->
`aggregate` (mean ± std over seeds, one row per cell) -> tables (`paper_table`, `dataset_table`)
-> text (`format_*`, `render_markdown`, `render_latex`). Every step after loading is a pure
function of DataFrames, so tests can check the numbers against pandas directly. `build_report`
wires it together with the figures (analysis.plots) and writes REPORT.md.

No number in this module is a result: the paper's values come from paper_results.csv, ours from
the run directories / results.csv files. A cell without results is shown as missing, never filled.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import io
from bench.errors import UsageError
from bench.records import (
    CONFIG,
    FIGURES_DIR,
    GRID_DIR,
    LANDSCAPE_GLOB,
    METRICS,
    NOTES,
    REPORT,
    RESULTS,
    SUMMARY,
    TABLES_DIR,
)

from . import claims

# results/reference/ in a checkout (analysis/reference links to it); package data in a wheel.
REFERENCE_CSV = (Path(__file__).resolve().parent / "reference" / "paper_results.csv").resolve()
REFERENCE_COLUMNS = ("source", "table", "dataset", "model", "method", "top1_acc", "top1_std",
                     "images_per_s", "throughput_vs_base", "notes")
PAPER_SOURCE = "SAF"  # reference rows whose source starts with this are the paper's own tables
MISSING = "—"
OVERHEAD_DIR = "overhead"  # where `safbench overhead` writes its CSVs inside a results folder

BASE_METHOD = "sgd"  # our name for "the base optimizer alone" (SGD for ResNets, AdamW for ViTs)
# Display order: base optimizers first, then the methods in the paper's order.
METHOD_ORDER = ("sgd", "adamw", "sam", "esam", "gsam", "looksam", "saf", "mesa")
# Config columns that can set two cells of one (model, method) apart; the seed never does.
CONFIG_COLUMNS = ("optimizer", "epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov",
                  "label_smoothing", "schedule", "warmup_epochs", "lr_milestones", "lr_gamma", "bn_update",
                  "train_subset", "label_noise", "augment", "precision", "world_size", "device_name")
# Keep cells of different hardware apart (their images/s differ) without naming the hardware in every label.
UNLABELLED_COLUMNS = ("device_name",)
# Throughput is only comparable between runs of the same workload on the same hardware.
THROUGHPUT_MATCH = ("dataset", "model", "optimizer", "batch_size", "precision", "world_size", "device_name")
PROVENANCE_COLUMNS = ("git_commit", "torch_version", "python_version", "torchvision_version", "timm_version",
                      "device_name")
# (name in the aggregate, row column, scale): accuracies are stored as fractions, shown in %.
STATS = (("acc", "final_test_acc", 100.0), ("best_acc", "best_test_acc", 100.0),
         ("img_s", "images_per_s", 1.0), ("wall_s", "wall_s", 1.0), ("train_time_s", "train_time_s", 1.0),
         ("peak_mem", "peak_mem_bytes", 1.0), ("lambda_max", "lambda_max", 1.0),
         ("trace", "hessian_trace", 1.0))
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet",
                 "fashionmnist": "Fashion-MNIST", "synthetic": "Synthetic"}
# "pilots": exploratory runs kept beside a results folder, reported on their own (safbench report --results .../pilots)
_SKIP_DIRS = {TABLES_DIR, FIGURES_DIR, OVERHEAD_DIR, "reference", GRID_DIR, "__pycache__", "pilots"}


# ---- loading ------------------------------------------------------------------------------------
def find_result_folders(root: str | Path) -> list[Path]:
    """Folders under `root` holding a results.csv or run directories (folders with a summary.json)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"results folder {root} does not exist (pass --results DIR with run directories "
                         "or results.csv files)")
    found: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if SUMMARY in filenames:  # a run directory: its parent is the results folder
            found.add(here.parent)
            dirnames.clear()
            continue
        if RESULTS in filenames:
            found.add(here)
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
    return sorted(found)


def read_folder(folder: Path, damaged: list | None = None) -> pd.DataFrame:
    """The flat rows of one results folder: its run directories, else its results.csv.

    Run directories are read through bench.results (the same rows `safbench grid` writes);
    results.csv rows whose run directory is gone (e.g. pruned before committing) are kept too.
    """
    from bench.results import collect_results

    found: list = []  # runs with a damaged summary, config or metrics file: listed, never shown as rows
    frame = collect_results(folder, found, check=(CONFIG, METRICS))
    if damaged is not None:
        damaged.extend(found)
    if not frame.empty:
        frame = frame.copy()
        frame["run_path"] = [str(folder / name) for name in frame["run_dir"]]
    csv = folder / RESULTS
    if csv.exists():
        try:
            stored = pd.read_csv(csv)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            stored = pd.DataFrame()
        if "run_dir" in stored.columns and not stored.empty:
            names = stored["run_dir"].astype(str).map(lambda s: Path(s).name)
            have = (set(frame["run_dir"]) if not frame.empty else set()) | {d.path.parent.name for d in found}
            stored = stored[~names.isin(have)].copy()
            stored["run_path"] = None
            frame = pd.concat([frame, stored], ignore_index=True) if not frame.empty else stored
    return frame


def load_rows(root: str | Path, damaged: list | None = None) -> pd.DataFrame:
    """Every stored run under `root`, one flat row each, with `grid` (its folder, relative to root).

    Runs with a damaged file are left out and appended to `damaged` (bench.damage.DamagedFile)."""
    root = Path(root)
    frames = []
    damaged = [] if damaged is None else damaged
    for folder in find_result_folders(root):
        frame = read_folder(folder, damaged)
        if frame.empty:
            continue
        if not folder.is_relative_to(root):  # root is a single run directory
            frame["grid"] = folder.name
        else:
            rel = folder.relative_to(root)
            frame["grid"] = (Path(root.name) / rel).as_posix() if str(rel) != "." else (root.name or ".")
        frames.append(frame)
    frames = [f for f in frames if {"method", "dataset", "model"} <= set(f.columns)]
    if (root / SUMMARY).exists():  # a single run directory: not its siblings
        frames = [f[f["run_dir"] == root.name] for f in frames if "run_dir" in f.columns]
        frames = [f for f in frames if len(f)]
    if not frames and damaged:
        raise UsageError(f"no readable results under {root}: {damaged[0]}"
                         + (f" (and {len(damaged) - 1} more damaged files)" if len(damaged) > 1 else ""))
    if not frames:
        raise UsageError(f"no results found under {root}: expected run directories (with {SUMMARY}) or "
                         f"{RESULTS} files")
    rows = pd.concat(frames, ignore_index=True)
    if "status" not in rows.columns:
        rows["status"] = "finished"
    rows["status"] = rows["status"].fillna("finished")
    return rows


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """The published numbers with their sources (results/reference/paper_results.csv by default)."""
    path = Path(path) if path is not None else REFERENCE_CSV
    try:
        ref = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read reference CSV {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in REFERENCE_COLUMNS if c not in ref.columns]
    if missing:
        raise UsageError(f"reference CSV {path} lacks column(s) {', '.join(missing)}; "
                         f"expected {', '.join(REFERENCE_COLUMNS)}")
    ref["notes"] = ref["notes"].fillna("")
    return ref


# ---- labels -------------------------------------------------------------------------------------
def paper_tables(reference: pd.DataFrame) -> dict[str, list[str]]:
    """The paper's tables and their datasets, in the reference CSV's order: {"Table 1": ["imagenet"], ...}."""
    own = reference[reference["source"].astype(str).str.startswith(PAPER_SOURCE)]
    tables: dict[str, list[str]] = {}
    for table, dataset in zip(own["table"], own["dataset"], strict=True):
        datasets = tables.setdefault(str(table), [])
        if dataset not in datasets:
            datasets.append(str(dataset))
    return tables


def _value_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _varies(values: pd.Series) -> bool:
    return values.map(_value_text).nunique() > 1


def _setting_labels(rows: pd.DataFrame) -> pd.Series:
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
                    ", ".join(f"{c.removeprefix('hp_')}={_value_text(r[c])}" for c in cols)
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
    rows["setting"] = _setting_labels(rows)
    return rows


# ---- aggregation --------------------------------------------------------------------------------
CELL_KEYS = ("dataset", "model_key", "method_label", "setting")


def _same(a: Any, b: Any) -> bool:
    return _value_text(a) == _value_text(b)


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
    rank = _method_rank(agg["method_label"])
    order = sorted(agg.index, key=lambda i: (agg.at[i, "dataset"], agg.at[i, "model_key"],
                                             rank[agg.at[i, "method_label"]], agg.at[i, "setting"]))
    return agg.loc[order].reset_index(drop=True)


# ---- tables -------------------------------------------------------------------------------------
def _order(values: Iterable[str], first: Sequence[str]) -> dict[str, int]:
    """A sort rank: `first` in its order, then the rest alphabetically."""
    rest = sorted(set(values) - set(first))
    return {v: i for i, v in enumerate(list(first) + rest)}


def _method_rank(methods: Iterable[str]) -> dict[str, int]:
    return _order(methods, METHOD_ORDER)


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
    model_rank = _order([k[0] for k in keys], list(dict.fromkeys(ref["model"].astype(str))))
    method_rank = _method_rank(k[1] for k in keys)
    keys.sort(key=lambda k: (model_rank[k[0]], method_rank[k[1]], k[2]))
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
    model_rank = _order(ours["model_key"], [])
    method_rank = _method_rank(ours["method_label"])
    keys = zip(ours["model_key"], ours["method_label"], ours["setting"], strict=True)
    ours["_rank"] = [(model_rank[m], method_rank[k], s) for m, k, s in keys]
    ours = ours.sort_values("_rank").drop(columns="_rank")
    records = []
    for _, r in ours.iterrows():
        rec = {"model": r["model_key"], "method": r["method_label"], "setting": r["setting"],
               "n": int(r["n"]), "n_diverged": int(r["n_diverged"]), "n_failed": int(r["n_failed"]),
               "seeds": r["seeds"]}
        for name in ("acc", "best_acc", "img_s", "wall_s", "train_time_s", "lambda_max", "trace"):
            rec[f"{name}_mean"], rec[f"{name}_std"] = r[f"{name}_mean"], r[f"{name}_std"]
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


# ---- text ---------------------------------------------------------------------------------------
def is_missing(x: Any) -> bool:
    """None or NaN: a cell without a value (shown as MISSING)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_pm(mean: Any, std: Any, digits: int = 2) -> str:
    """"mean ± std", just "mean" without a std (one seed), the missing mark without a mean."""
    if is_missing(mean):
        return MISSING
    if is_missing(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_speed(mean: Any, std: Any = math.nan) -> str:
    digits = 0 if not is_missing(mean) and abs(mean) >= 100 else 1
    return fmt_pm(mean, std, digits)


def fmt_sig(mean: Any, std: Any = math.nan) -> str:
    """Hessian quantities span orders of magnitude: 4 significant digits, std to 2."""
    if is_missing(mean):
        return MISSING
    return f"{mean:.4g}" if is_missing(std) else f"{mean:.4g} ± {std:.2g}"


def fmt_time(mean: Any, std: Any = math.nan) -> str:
    """Seconds: one decimal from 10 s up, more below so that tiny runs do not all read 0.0."""
    digits = 1 if is_missing(mean) or abs(mean) >= 10 else 2 if abs(mean) >= 1 else 3
    return fmt_pm(mean, std, digits)


def fmt_diff(x: Any) -> str:
    return MISSING if is_missing(x) else f"{x:+.2f}"


def fmt_share(x: Any) -> str:
    return MISSING if is_missing(x) else f"{x:.3f}"


def fmt_seeds(n: Any, n_diverged: Any = 0, n_failed: Any = 0) -> str:
    text = str(int(n)) if not is_missing(n) else "0"
    extra = [f"{int(v)} {what}" for v, what in ((n_diverged, "diverged"), (n_failed, "failed"))
             if not is_missing(v) and v]
    return f"{text} (+{', '.join(extra)})" if extra else text


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def _pairs(fmt: Any, means: Iterable[Any], stds: Iterable[Any]) -> list[str]:
    return [fmt(m, s) for m, s in zip(means, stds, strict=True)]


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
        cols[f"{name} acc (%)"] = _pairs(fmt_pm, t["acc_mean"], t["acc_std"])
        cols[f"{name} paper acc (%)"] = _pairs(fmt_pm, t["paper_acc"], t["paper_acc_std"])
        cols[f"{name} Δ acc"] = [fmt_diff(x) for x in t["acc_diff"]]
        cols[f"{name} img/s"] = _pairs(fmt_speed, t["img_s_mean"], t["img_s_std"])
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
    cols["Test acc (%)"] = _pairs(fmt_pm, table["acc_mean"], table["acc_std"])
    cols["Best acc (%)"] = _pairs(fmt_pm, table["best_acc_mean"], table["best_acc_std"])
    cols["Images/s"] = _pairs(fmt_speed, table["img_s_mean"], table["img_s_std"])
    cols["Share of base"] = [fmt_share(x) for x in table["share"]]
    cols["Train time (s)"] = _pairs(fmt_time, table["train_time_s_mean"], table["train_time_s_std"])
    if table["lambda_max_mean"].notna().any():
        cols["λ_max"] = _pairs(fmt_sig, table["lambda_max_mean"], table["lambda_max_std"])
    if table["trace_mean"].notna().any():
        cols["Hessian trace"] = _pairs(fmt_sig, table["trace_mean"], table["trace_std"])
    if table["ref_acc"].notna().any():
        cols["Ref. acc (%)"] = _pairs(fmt_pm, table["ref_acc"], table["ref_acc_std"])
        cols["Δ vs ref."] = [fmt_diff(x) for x in table["acc_diff_ref"]]
    return pd.DataFrame(cols)


def format_reference(ref: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Source": list(ref["source"]), "Table": list(ref["table"]), "Model": list(ref["model"]),
        "Method": list(ref["method"]),
        "Acc (%)": _pairs(fmt_pm, ref["top1_acc"], ref["top1_std"]),
        "Images/s": [fmt_speed(x) for x in ref["images_per_s"]], "Notes": list(ref["notes"])})


def render_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured pipe table (no tabulate dependency); '|' inside cells is escaped."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "—": "---", "Δ": r"$\Delta$", "λ": r"$\lambda$", "×": r"$\times$"}


def latex_escape(text: Any) -> str:
    # λ_max is a symbol with a subscript, not an escaped underscore.
    parts = ["".join(_LATEX_SPECIAL.get(ch, ch) for ch in piece) for piece in str(text).split("λ_max")]
    out = r"$\lambda_{\max}$".join(parts)
    for symbol, command in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, command)
    return out


def render_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table environment; numbers right-aligned, names left-aligned."""
    align = "".join("l" if c in ("Model", "Method", "Setting", "Source", "Table", "Notes") else "r"
                    for c in table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(x) for x in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# ---- the report ---------------------------------------------------------------------------------
@dataclass
class TableFile:
    """One table as written: its title, the markdown shown in REPORT.md and the files."""

    title: str
    markdown: str
    files: dict[str, Path]  # "md", "tex", "csv"
    notes: list[str] = field(default_factory=list)
    kind: str = ""  # "paper", "dataset" or "cost": the report section it belongs to


@dataclass
class Report:
    out: Path
    report: Path
    tables: list[TableFile]
    figures: list[Any]  # analysis.plots.FigureFile
    rows: pd.DataFrame
    damaged: list[Any] = field(default_factory=list)  # bench.damage.DamagedFile of the runs left out


def write_table(out: Path, stem: str, title: str, numbers: pd.DataFrame, shown: pd.DataFrame,
                 extra_md: str = "", notes: Sequence[str] = (), kind: str = "") -> TableFile:
    folder = out / TABLES_DIR
    md = f"### {title}\n\n{render_markdown(shown)}"
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    md += extra_md
    files = {"md": folder / f"{stem}.md", "tex": folder / f"{stem}.tex", "csv": folder / f"{stem}.csv"}
    io.write_text(files["md"], md)
    io.write_text(files["tex"], render_latex(shown, title, f"tab:{stem}"))
    io.write_csv(files["csv"], numbers)
    return TableFile(title, md, files, list(notes), kind)


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
    io.write_csv(out / TABLES_DIR / "cells.csv", agg)
    io.write_csv(out / TABLES_DIR / "runs.csv", rows)
    return written


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
        rank = _method_rank(methods)
        rec["Methods"] = ", ".join(sorted(methods, key=lambda m: rank[m]))
        rec["Seeds"] = " ".join(_value_text(x) for x in sorted(g["seed"].dropna().unique())) if "seed" in g else MISSING
        epochs = g["epochs"].dropna().unique() if "epochs" in g else []
        rec["Epochs"] = ", ".join(_value_text(e) for e in sorted(epochs)) or MISSING
        status = g["status"].value_counts()
        rec["Runs"] = f"{len(g)}" + (" (" + ", ".join(f"{n} {st}" for st, n in status.items()) + ")"
                                     if set(status.index) != {"finished"} else "")
        devices = g["device_name"].dropna().astype(str).unique() if "device_name" in g else []
        rec["Device"] = "; ".join(devices) or MISSING
        recs.append(rec)
    return pd.DataFrame(recs)


def time_to_target_tables(rows: pd.DataFrame, out: Path) -> list[TableFile]:
    """Per dataset with metrics.csv curves and a base cell: seconds until each method first reaches the
    base optimizer's final accuracy (analysis.time_to_target)."""
    from .plots import epoch_curves
    from .time_to_target import format_time_to_target, time_to_target

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


def provenance_lines(rows: pd.DataFrame) -> list[str]:
    """Deduplicated commands, commits, versions and devices behind the rows, with run counts."""
    lines = []
    for col in PROVENANCE_COLUMNS:
        if col not in rows.columns:
            continue
        counts = rows[col].fillna("unknown").astype(str).value_counts(sort=False)
        lines.append(f"- {col}: " + "; ".join(f"`{v}` ({n} runs)" for v, n in counts.items()))
    return lines


def commands(rows: pd.DataFrame, column: str = "command") -> list[str]:
    if column not in rows.columns:
        return []
    return list(dict.fromkeys(str(c) for c in rows[column].dropna() if str(c)))


def landscape_commands(rows: pd.DataFrame) -> list[str]:
    """The commands recorded in the runs' landscape files (deduplicated, in run order)."""
    from .landscape import load_landscape

    found: list[str] = []
    for run_path in rows.get("run_path", pd.Series(dtype=object)).dropna():
        for path in sorted(Path(run_path).glob(LANDSCAPE_GLOB)):
            try:
                command = load_landscape(path)[1].get("command")
            except (OSError, ValueError):
                continue
            if command:
                found.append(str(command))
    return list(dict.fromkeys(found))


def notes(results: Path) -> list[tuple[str, str]]:
    """(folder, text) of every NOTES.md in the results folders: conclusions written from the tables."""
    folders = dict.fromkeys([results, *find_result_folders(results)]) if results.is_dir() else {}
    return [(_rel(folder, results), (folder / NOTES).read_text().strip())
            for folder in folders if (folder / NOTES).is_file()]


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _shown_path(path: Path) -> str:
    """Relative to the working directory when inside it: stable text in the committed report."""
    return _rel(path, Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else str(path)


def _table_markdown(table: TableFile, report_dir: Path) -> str:
    links = " · ".join(f"[{kind}]({_rel(p, report_dir)})" for kind, p in table.files.items())
    return table.markdown + f"\nFiles: {links}\n"


@dataclass
class CostSection:
    """The tables made from `safbench overhead` CSVs, with where those came from."""

    folder: str
    tables: list[TableFile]
    commands: list[str]
    provenance: list[str]


def _figure_markdown(f: Any, report_dir: Path) -> str:
    png, pdf = _rel(f.png, report_dir), _rel(f.pdf, report_dir)
    return (f"### {f.title}\n\n![{f.title}]({png})\n\n"
            f"{f.caption} Files: [PNG]({png}) · [PDF]({pdf})\n" + getattr(f, "extra", ""))


def report_markdown(report_dir: Path, rows: pd.DataFrame, tables: Sequence[TableFile],
                    figures: Sequence[Any], regenerate: str, reference: str,
                    conclusions: Sequence[tuple[str, str]] = (), cost: CostSection | None = None,
                    skipped: Sequence[str] = (), claim_tables: Sequence[TableFile] = (),
                    damaged: Sequence[Any] = ()) -> str:
    """REPORT.md, top-down: what was measured (the runs, their tables), conclusions, the claims judged, cost,
    flatness, the paper's tables (only rows with a run of ours), then how to regenerate and the provenance."""
    status = rows["status"].value_counts()
    by_kind = {k: [t for t in tables if getattr(t, "kind", "") == k] for k in ("dataset", "cost", "paper")}
    other = [t for t in tables if getattr(t, "kind", "") not in by_kind]
    section = {"cost": [f for f in figures if getattr(f, "section", "") == "cost"]}
    section["flatness"] = [f for f in figures if f not in section["cost"]]
    parts = [
        "# safbench report\n",
        f"Generated from {len(rows)} stored runs ({', '.join(f'{n} {s}' for s, n in status.items())}) in "
        + ", ".join(f"`{g}`" for g in sorted(set(rows['grid'].astype(str)))) + ". "
        "Every number comes from the stored rows (mean ± sample std over finished seeds; accuracy is the "
        f"final test accuracy in %); the published numbers come from `{reference}`. A missing cell is shown "
        f"as {MISSING}; diverged and failed runs are counted, not averaged.\n",
        "## What was measured\n",
        render_markdown(runs_overview(rows)),
    ]
    for t in by_kind["dataset"] + other:
        parts.append(_table_markdown(t, report_dir))
    if damaged:
        parts.append("## Damaged runs (left out)\n")
        parts.append("\n".join(f"- `{d.path}`: {d.cause}; {d.action}" for d in damaged) + "\n")
    if conclusions:
        parts.append("## Conclusions\n")
        parts.append(f"Written by hand from the tables of this report (kept in each results folder's `{NOTES}`).\n")
        for folder, text in conclusions:
            parts.append(f"### From `{folder}`\n\n{text}\n")
    if claim_tables:
        parts.append("## Claims\n")
        parts.append(f"Each of the paper's claims beside our measurement in one results folder: per-seed paired "
                     f"differences (same initial weights and data order within a seed) with a 95% Student-t "
                     f"interval, or a percentile bootstrap over seeds for ratios. "
                     f"Verdicts follow `analysis/claims.py`: "
                     f"{claims.REPRODUCED} when the interval lies wholly on the claimed side of the rule's threshold, "
                     f"{claims.NOT_REPRODUCED} when wholly on the other, {claims.INCONCLUSIVE} otherwise.\n")
        for t in claim_tables:
            parts.append(_table_markdown(t, report_dir))
    if by_kind["cost"] or cost is not None or section["cost"]:
        parts.append("## Cost\n")
        for t in by_kind["cost"]:
            parts.append(_table_markdown(t, report_dir))
        for f in section["cost"]:
            parts.append(_figure_markdown(f, report_dir))
    if cost is not None:
        parts.append("### Cost per step (safbench overhead)\n")
        parts.append(f"From the CSVs in `{cost.folder}`: every method timed in one process on the same model "
                     "and batch, interleaved round by round, so the ratios to SGD hold even on a machine whose "
                     "speed drifts; the absolute images/s are not comparable across files. The runs' own "
                     "images/s in the tables above are taken minutes or hours apart, one run after another, "
                     "and move with the machine's load; where the two disagree, trust these.\n")
        for t in cost.tables:
            parts.append(_table_markdown(t, report_dir))
    if section["flatness"]:
        parts.append("## Flatness\n")
        parts.append("λ_max and the Hessian trace per method are in the tables above; the figures below draw "
                     "the Hessian spectrum and the loss landscapes of the stored runs.\n")
        for f in section["flatness"]:
            parts.append(_figure_markdown(f, report_dir))
    elif not figures:
        parts.append("No figures (nothing to plot, or --no-figures).\n")
    parts.append("## Against the paper's tables\n")
    pointer = (f"Only rows with at least one run of ours are shown (each table's csv keeps every row); the full "
               f"published tables are in `{reference}`.")
    if skipped:
        pointer += f" No run of ours for paper {'; '.join(skipped)}."
    parts.append(pointer + "\n")
    for t in by_kind["paper"]:
        parts.append(_table_markdown(t, report_dir))
    parts.append("## How to regenerate\n")
    parts.append(f"```\n{regenerate}\n```\n")
    parts.append("Re-running the commands listed under Provenance recreates the underlying runs.\n")
    parts.append("## Provenance\n")
    cmds = commands(rows)
    parts.append("Commands that made the runs (deduplicated):\n")
    parts.append("```\n" + ("\n".join(cmds) if cmds else "(no command recorded)") + "\n```\n")
    flat = commands(rows, "hessian_command") + landscape_commands(rows)
    if flat:
        parts.append("Commands that measured flatness (Hessian, landscapes) of the stored runs:\n")
        parts.append("```\n" + "\n".join(flat) + "\n```\n")
    parts.append("\n".join(provenance_lines(rows)) + "\n")
    if cost is not None:
        parts.append("Commands that measured the cost per step:\n")
        parts.append("```\n" + "\n".join(cost.commands or ["(no command recorded)"]) + "\n```\n")
        parts.append("\n".join(cost.provenance) + "\n")
    parts.append(f"Aggregates: [cells.csv]({_rel(report_dir / TABLES_DIR / 'cells.csv', report_dir)}) · "
                 f"rows: [runs.csv]({_rel(report_dir / TABLES_DIR / 'runs.csv', report_dir)})\n")
    return "\n".join(parts)


def build_report(results: str | Path = "results", out: str | Path | None = None,
                 reference: str | Path | None = None, *, figures: bool = True,
                 regenerate: str | None = None, overhead: str | Path | None = None) -> Report:
    """Read every stored run under `results`, write tables, figures and REPORT.md into `out`.

    The cost section comes from `overhead` (default: `results`/overhead when it exists).
    """
    from . import overhead_report

    results = Path(results)
    out = Path(out) if out is not None else results
    ref_path = Path(reference) if reference is not None else REFERENCE_CSV
    reference_frame = load_reference(ref_path)
    damaged: list[Any] = []
    rows = prepare(load_rows(results, damaged), reference_frame)
    overhead_dir = Path(overhead) if overhead is not None else results / OVERHEAD_DIR
    found = overhead_report.load_overhead(overhead_dir) if overhead is not None or overhead_dir.is_dir() else {}
    io.check_writable(out)
    (out / TABLES_DIR).mkdir(parents=True, exist_ok=True)
    agg = aggregate(rows)
    tables = build_tables(rows, agg, reference_frame, out)
    tables += time_to_target_tables(rows, out)
    cost, steps = None, None
    if found:
        cost_tables, steps = overhead_report.build_overhead_tables(found, reference_frame, out)
        cost = CostSection(_shown_path(overhead_dir), cost_tables, overhead_report.commands(found),
                           overhead_report.provenance_lines(found))
    claim_tables, claim_folders = [], claims.folders_with_claims(rows)
    for grid, labelled in claim_folders.items():
        frame = claims.claims_frame(claims.claims_table(labelled, steps=found.get("steps")))
        claim_tables.append(write_table(out, f"claims_{slug(grid)}", f"Claims judged on `{grid}`", frame,
                                        claims.format_claims(frame)))
    made = []
    if figures:
        from . import plots
        from .sharpness_figure import save_sharpness_figure

        made = plots.make_figures(rows, agg, out / FIGURES_DIR)
        for grid, labelled in claim_folders.items():
            figure = save_sharpness_figure(labelled, grid, out / FIGURES_DIR, list(METHOD_ORDER))
            if figure is not None:
                made.append(figure)
        if steps is not None and len(steps):
            made.append(plots.save_overhead_figure(overhead_report.step_panels(steps), out / FIGURES_DIR))
    # Rebuilt from the arguments rather than sys.argv: the same line whoever called us.
    regenerate = regenerate or f"safbench report --results {results} --out {out}" + (
        f" --reference {reference}" if reference is not None else "") + (
        f" --overhead {overhead}" if overhead is not None else "") + ("" if figures else " --no-figures")
    path = out / REPORT
    io.write_text(path, report_markdown(out, rows, tables, made, regenerate, _shown_path(ref_path),
                                        notes(results), cost, tables_without_ours(agg, reference_frame),
                                        claim_tables, damaged))
    return Report(out, path, tables + claim_tables + (cost.tables if cost else []), made, rows, damaged)
