"""What the report reads about a results folder: its runs' rows, the published numbers, the hand-written notes.

Rows come only through bench.results (`collect_results`: the same rows `safbench grid` writes to
results.csv), plus the results.csv rows whose run directory is gone (pruned before committing). The
files beside a run that figures and cost tables read are analysis.report.run_files's.

The rows frame (`load_rows`): one row per run, with every results-row column (bench.results) and
`run_path` (the run directory, None for a row read from results.csv alone), `grid` (its results folder
as shown, e.g. "results/fashionmnist") and `status` ("finished" where the row has none).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from bench.damage import DamagedFile
from bench.errors import UsageError
from bench.records import CONFIG, FIGURES_DIR, GRID_DIR, METRICS, NOTES, RESULTS, SUMMARY, TABLES_DIR, TRIALS_DIR
from bench.results import collect_results

from .format import relative

# results/reference/ in a checkout (analysis/reference links to it); package data in a wheel.
REFERENCE_CSV = (Path(__file__).resolve().parent.parent / "reference" / "paper_results.csv").resolve()
REFERENCE_COLUMNS = ("source", "table", "dataset", "model", "method", "top1_acc", "top1_std",
                     "images_per_s", "throughput_vs_base", "notes")
PAPER_SOURCE = "SAF"  # reference rows whose source starts with this are the paper's own tables
OVERHEAD_DIR = "overhead"  # where `safbench overhead` writes its CSVs inside a results folder
# "pilots": exploratory runs kept beside a results folder, reported on their own (safbench report --results .../pilots);
# tuning trials are reported through their folder's tuning.csv (bench.tune_cli), not as runs
_SKIP_DIRS = {TABLES_DIR, FIGURES_DIR, OVERHEAD_DIR, "reference", GRID_DIR, "__pycache__", "pilots", TRIALS_DIR}


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


def read_folder(folder: Path, damaged: list[DamagedFile] | None = None) -> pd.DataFrame:
    """The flat rows of one results folder: its run directories, else its results.csv.

    Run directories are read through bench.results (the same rows `safbench grid` writes);
    results.csv rows whose run directory is gone (e.g. pruned before committing) are kept too.
    """
    found: list[DamagedFile] = []  # runs with a damaged summary, config or metrics file: listed, never rows
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


def load_rows(root: str | Path, damaged: list[DamagedFile] | None = None) -> pd.DataFrame:
    """Every stored run under `root`, one flat row each, with `grid` (its folder, relative to root).

    Runs with a damaged file are left out and appended to `damaged`."""
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
    """The published numbers with their sources (results/reference/paper_results.csv by default).

    Columns: REFERENCE_COLUMNS; `notes` is "" where the CSV has none."""
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


def paper_tables(reference: pd.DataFrame) -> dict[str, list[str]]:
    """The paper's tables and their datasets, in the reference CSV's order: {"Table 1": ["imagenet"], ...}."""
    own = reference[reference["source"].astype(str).str.startswith(PAPER_SOURCE)]
    tables: dict[str, list[str]] = {}
    for table, dataset in zip(own["table"], own["dataset"], strict=True):
        datasets = tables.setdefault(str(table), [])
        if dataset not in datasets:
            datasets.append(str(dataset))
    return tables


def read_notes(results: Path) -> list[tuple[str, str]]:
    """(folder, text) of every NOTES.md in the results folders: conclusions written from the tables."""
    folders = dict.fromkeys([results, *find_result_folders(results)]) if results.is_dir() else {}
    return [(relative(folder, results), (folder / NOTES).read_text().strip())
            for folder in folders if (folder / NOTES).is_file()]
