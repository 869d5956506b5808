"""The files beside a run's summary that figures and cost tables read: metrics.csv, the Hessian and landscape files.

Each reader takes labelled rows (analysis.report.aggregate.prepare: `run_path`, `status` and RUN_KEYS) and
returns a long frame with RUN_KEYS repeated on every line, so figures group it like the rows. A file that
is missing or unreadable is skipped: a figure shows what is there, the damage check is bench.damage's.
The files are read by bench.rundir's lenient readers, with the names of bench.records; the npz format of
landscapes and densities is analysis.measure.landscape's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.measure.landscape import load_landscape
from bench.records import HESSIAN_DENSITY, LANDSCAPE_1D, LANDSCAPE_2D, LANDSCAPE_GLOB, LANDSCAPE_LINE_GLOB
from bench.rundir import read_hessian, read_hessian_epochs, read_metrics

from .format import is_missing

RUN_KEYS = ("dataset", "model_key", "method_label", "setting", "seed")
# The metrics.csv columns the cost figures and the time-to-target table need.
CURVE_COLUMNS = {"epoch", "test_acc", "epoch_time_s", "images_per_s"}
HESSIAN_CURVE_COLUMNS = ("epoch", "lambda_max", "trace")  # of hessian_epochs.csv
HESSIAN_VIEW_COLUMNS = ("lambda_max_true_labels", "lambda_max_flipped")  # under label noise, where measured


def runs_with_files(rows: pd.DataFrame) -> list[tuple[pd.Series, Path]]:
    """Finished runs whose directory is on disk (rows read from a results.csv alone have none)."""
    out = []
    for _, r in rows.iterrows():
        path = r.get("run_path")
        if isinstance(path, str) and path and r["status"] == "finished" and Path(path).is_dir():
            out.append((r, Path(path)))
    return out


def _with_keys(frame: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    for k in RUN_KEYS:
        frame[k] = row[k]
    return frame


def epoch_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv of every finished run, with cumulative training time (`train_time_cum`) and images
    processed (`images_cum`), plus RUN_KEYS."""
    frames = []
    for r, path in runs_with_files(rows):
        m = read_metrics(path)
        if m is None or m.empty or not CURVE_COLUMNS <= set(m.columns):
            continue
        m = m.sort_values("epoch").copy()
        m["train_time_cum"] = m["epoch_time_s"].cumsum()
        # images_per_s is images over training time, so their product is the epoch's images.
        m["images_cum"] = (m["images_per_s"] * m["epoch_time_s"]).cumsum()
        frames.append(_with_keys(m, r))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def sharpness_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """(cell, seed, epoch, sharpness) from the metrics.csv of runs that logged it; rows carry `cell`
    (analysis.report.claims.label_cells)."""
    frames = []
    for row in rows.itertuples():
        path = getattr(row, "run_path", None)
        if not isinstance(path, str):
            continue
        metrics = read_metrics(Path(path))
        if metrics is not None and "sharpness" in metrics:
            frames.append(metrics[["epoch", "sharpness"]].assign(cell=row.cell, seed=row.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


FIT_COLUMNS = ("train_acc_clean", "train_acc_flipped_noisy", "train_acc_flipped_true")  # metrics.csv, label noise
ESAM_FLIPPED_SHARE = "esam_selected_flipped_share"


def label_fit_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """(cell, seed, epoch, FIT_COLUMNS, and ESAM's share of flipped samples among those kept where logged) from
    the metrics.csv of runs under label noise; rows carry `cell` (analysis.report.claims.label_cells)."""
    frames = []
    for row in rows.itertuples():
        path = getattr(row, "run_path", None)
        if not isinstance(path, str):
            continue
        metrics = read_metrics(Path(path))
        if metrics is not None and set(FIT_COLUMNS) <= set(metrics.columns):
            keep = ["epoch", *FIT_COLUMNS] + ([ESAM_FLIPPED_SHARE] if ESAM_FLIPPED_SHARE in metrics else [])
            noise = getattr(row, "label_noise_flipped", np.nan) / getattr(row, "num_samples", np.nan)
            frames.append(metrics[keep].assign(cell=row.cell, seed=row.seed, flipped_fraction=noise))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def hessian_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """λ_max and trace at chosen epochs (hessian_epochs.csv) plus the final hessian.json point.

    Epochs follow metrics.csv: epoch e is the model after training epoch e (0-based); the final
    measurement sits at the last completed epoch unless the epoch file already has it.
    """
    frames = []
    for r, path in runs_with_files(rows):
        epochs = read_hessian_epochs(path)
        readable = epochs is not None and set(HESSIAN_CURVE_COLUMNS) <= set(epochs.columns)
        views = [c for c in HESSIAN_VIEW_COLUMNS if readable and c in epochs.columns]
        parts = [epochs[[*HESSIAN_CURVE_COLUMNS, *views]]] if readable else []
        final = read_hessian(path)
        done = r.get("epochs_completed", r.get("epochs"))
        if final is None or is_missing(done) or final.get("epoch") != int(done):
            final = None  # measured another model than the run's last: not its final point
        if final is not None:
            last = int(done) - 1
            if not any((p["epoch"] == last).any() for p in parts):
                parts.append(pd.DataFrame([{"epoch": last, "lambda_max": final.get("lambda_max"),
                                            "trace": final.get("trace"),
                                            **{c: final[c] for c in HESSIAN_VIEW_COLUMNS if c in final}}]))
        if parts:
            frames.append(_with_keys(pd.concat(parts, ignore_index=True), r))
    return pd.concat(frames, ignore_index=True).sort_values("epoch") if frames else pd.DataFrame()


def landscape_files(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per stored landscape of the run's final model: RUN_KEYS, kind (1d, 2d, line), path,
    to_method and to_run_dir (the other end of a line)."""
    recs = []
    for r, path in runs_with_files(rows):
        found = [("1d", path / LANDSCAPE_1D), ("2d", path / LANDSCAPE_2D)]
        found += [("line", p) for p in sorted(path.glob(LANDSCAPE_LINE_GLOB))]
        for kind, file in found:
            if not file.exists():
                continue
            try:
                _, meta = load_landscape(file)
            except (OSError, ValueError, KeyError):
                continue
            done = r.get("epochs_completed")
            if "epoch" in meta and (is_missing(done) or meta["epoch"] != int(done)):
                continue  # the landscape of an earlier model (files before epochs were recorded lack it)
            recs.append({**{k: r[k] for k in RUN_KEYS}, "kind": kind, "path": str(file),
                         "to_method": meta.get("to_method", ""), "to_run_dir": meta.get("to_run_dir", "")})
    return pd.DataFrame(recs)


def landscape_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of one landscape file listed by `landscape_files` (alphas or xs/ys, loss, accuracy)."""
    return load_landscape(path)[0]


def density_files(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per stored Hessian density (hessian_density.npz): RUN_KEYS, path, the quadrature's `nodes`
    and `weights` (arrays) and its meta: n_iter, n_v, samples, command."""
    recs = []
    for r, path in runs_with_files(rows):
        file = path / HESSIAN_DENSITY
        if not file.exists():
            continue
        try:
            arrays, meta = load_landscape(file)
        except (OSError, ValueError, KeyError):
            continue
        if not {"nodes", "weights"} <= set(arrays):
            continue
        recs.append({**{k: r[k] for k in RUN_KEYS}, "path": str(file), "nodes": arrays["nodes"],
                     "weights": arrays["weights"], "n_iter": meta.get("n_iter"), "n_v": meta.get("n_v"),
                     "samples": meta.get("samples"), "command": meta.get("command", "")})
    return pd.DataFrame(recs)


def landscape_commands(rows: pd.DataFrame) -> list[str]:
    """The commands recorded in the runs' landscape files (deduplicated, in run order)."""
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
