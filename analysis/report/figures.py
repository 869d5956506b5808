"""Which figures the stored data allow, and their files: each saved as PNG and PDF, returned as a FigureFile.

One set per results folder and dataset (two folders can hold different regimes of one dataset), one
landscape set per model, the overhead figure and a sharpness figure per folder whose claims are judged.
The charts themselves are analysis.report.plots's and analysis.report.landscape_plots's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench import io

from .aggregate import aggregate, setting_labels
from .cost import cost_targets
from .format import dataset_name, is_missing, render_markdown, slug
from .landscape_plots import (
    LANDSCAPE_CAP_RATIO,
    landscape_levels,
    plot_landscape_1d,
    plot_landscape_2d,
    plot_landscape_3d,
)
from .overhead import StepPanel
from .plots import (
    density_table,
    plot_cost,
    plot_hessian_density,
    plot_lambda,
    plot_overhead,
    plot_sharpness,
    plot_throughput,
    series_label,
    series_of,
)
from .run_files import (
    density_files,
    epoch_curves,
    hessian_curves,
    landscape_arrays,
    landscape_files,
    sharpness_curves,
)
from .tuning import BOTH, DEFAULT, TUNED


@dataclass
class FigureFile:
    """One figure as saved: what REPORT.md shows of it and its two files."""

    title: str
    caption: str
    png: Path
    pdf: Path
    extra: str = ""  # markdown shown after the figure's links (e.g. the numbers read off it)
    section: str = "flatness"  # the report section: "cost" or "flatness"


def save_figure(fig: Figure, stem: Path) -> tuple[Path, Path]:
    """PNG and PDF beside each other, each written atomically, without timestamps (stable files)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    io.atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=150,
                                               metadata={"Software": None}), binary=True)
    io.atomic_write(pdf, lambda f: fig.savefig(f, format="pdf",
                                               metadata={"CreationDate": None, "Creator": None}), binary=True)
    return png, pdf


def save_overhead_figure(steps: Sequence[StepPanel], folder: Path) -> FigureFile:
    png, pdf = save_figure(plot_overhead(steps, "Step time per method (× SGD's)"), folder / "overhead_steps")
    return FigureFile("Step time per method, every overhead measurement",
                      "Median step time / SGD's over interleaved rounds (bars: quartiles); black ticks: the "
                      "suite's upper targets on that device; hatched: the official SAF store design.", png, pdf,
                      section="cost")


def _final_points(rows: pd.DataFrame) -> pd.DataFrame:
    """Finished rows with `epochs_done` and `images`: the cost figure's markers for runs without a curve."""
    ok = rows[rows["status"] == "finished"].copy()
    if ok.empty or "train_time_s" not in ok.columns:
        return pd.DataFrame()
    done = ok["epochs_completed"] if "epochs_completed" in ok.columns else ok.get("epochs")
    samples = ok["num_samples"] if "num_samples" in ok.columns else np.nan
    ok["images"] = pd.to_numeric(samples, errors="coerce") * pd.to_numeric(done, errors="coerce")
    ok["epochs_done"] = pd.to_numeric(done, errors="coerce")
    return ok


RUN_SETTING_NAMES = (TUNED, DEFAULT, BOTH)  # a tuned folder's runs (analysis.report.tuning.run_settings)


def make_figures(rows: pd.DataFrame, cells: pd.DataFrame, folder: Path) -> list[FigureFile]:
    """Every figure the stored data allow, per results folder and dataset (and per model for landscapes)."""
    made: list[FigureFile] = []

    def save(fig: Figure, name: str, title: str, caption: str) -> None:
        png, pdf = save_figure(fig, folder / name)
        made.append(FigureFile(title, caption, png, pdf,
                               section="cost" if name.startswith(("throughput", "cost")) else "flatness"))

    # One set of figures per results folder and dataset: two folders can hold different regimes of one dataset.
    groups = rows[["dataset", "grid"]].astype(str).drop_duplicates()
    for d, grid in groups.itertuples(index=False):
        folder_name = Path(grid).name
        apart = int((groups["dataset"] == d).sum()) > 1 and slug(folder_name) != slug(d)
        key = f"{slug(d)}_{slug(folder_name)}" if apart else slug(d)
        name = dataset_name(d) + (f" ({folder_name})" if apart else "")
        r = rows[(rows["dataset"].astype(str) == d) & (rows["grid"].astype(str) == grid)]
        # What sets cells apart within this folder, not the dataset; a tuned folder keeps its tuned/default names.
        r = r.assign(setting=r["setting"].where(r["setting"].isin(RUN_SETTING_NAMES), setting_labels(r)))
        c = aggregate(r) if len(groups) > 1 else cells[cells["dataset"] == d]  # this folder's cells alone
        curves_all, hess_all, land_all, dens_all = epoch_curves(r), hessian_curves(r), landscape_files(r), \
            density_files(r)
        if c["img_s_mean"].notna().any():
            save(plot_throughput(c[c["img_s_mean"].notna()], f"{name}:\ntraining throughput"),
                 f"throughput_{key}", f"{name}: throughput per method",
                 "Median images/s of the post-warm-up epochs, mean ± std over seeds; above each bar its "
                 "share of the base optimizer's throughput on the same workload and hardware.")
        curves = curves_all[curves_all["dataset"] == d] if len(curves_all) else curves_all
        points = _final_points(r)
        if len(points) and len(curves):
            covered = set(zip(curves["model_key"], curves["method_label"], curves["setting"], strict=True))
            keep = [(m, k, s) not in covered for m, k, s in
                    zip(points["model_key"], points["method_label"], points["setting"], strict=True)]
            points = points[keep]
        if len(curves) or len(points):
            targets = cost_targets(curves, points)
            save(plot_cost(curves, points, f"{name}: test accuracy against training cost", targets),
                 f"cost_{key}", f"{name}: test accuracy against training time and epochs",
                 "Test accuracy after each epoch, mean over seeds (right: band of ± one std), against the "
                 "cumulative training time (the sum of the epochs' epoch_time_s, evaluation excluded) and "
                 "against epochs; dashed: the base optimizer's final accuracy, the target of the "
                 "time-to-target table.")
        hess = hess_all[hess_all["dataset"] == d] if len(hess_all) else hess_all
        if c["lambda_max_mean"].notna().any() or len(hess):
            save(plot_lambda(c, hess, rf"{name}: Hessian $\lambda_{{\max}}$"), f"lambda_max_{key}",
                 f"{name}: λ_max per method and over epochs",
                 "Largest Hessian eigenvalue of the training loss on fixed samples; mean ± std over seeds.")
        dens = dens_all[dens_all["dataset"] == d] if len(dens_all) else dens_all
        for model in dict.fromkeys(dens.get("model_key", [])):
            dm = dens[dens["model_key"] == model]
            png, pdf = save_figure(plot_hessian_density(dm, f"{name} / {model}: Hessian eigenvalue density"),
                                   folder / f"hessian_density_{key}_{slug(model)}")
            runs = int(dm["n_v"].iloc[0]) if not is_missing(dm["n_v"].iloc[0]) else "?"
            made.append(FigureFile(
                f"{name} / {model}: Hessian eigenvalue density", "Stochastic Lanczos quadrature of the training "
                f"loss's Hessian on {dm['samples'].iloc[0]} fixed samples ({runs} × {dm['n_iter'].iloc[0]} Lanczos "
                "steps per run), smoothed with one Gaussian width for every curve; log density. The extreme "
                "Ritz values (below) estimate the largest and the most negative eigenvalue.", png, pdf,
                extra="\n" + render_markdown(density_table(dm))))
        land = land_all[land_all["dataset"] == d] if len(land_all) else land_all
        for model in dict.fromkeys(land.get("model_key", [])):
            made.extend(_landscape_figures(land[land["model_key"] == model], name, key, model, folder))
    return made


def _landscape_seed(frame: pd.DataFrame) -> Any:
    """The seed whose runs have landscapes for the most methods (the lowest on a tie): one seed per figure,
    so every method is seen from the same initialisation and data order."""
    counts = frame.groupby("seed")["method_label"].nunique()
    return min(counts.index, key=lambda s: (-counts[s], s))


def _landscape_figures(lm: pd.DataFrame, name: str, d: str, model: str, folder: Path) -> list[FigureFile]:
    """The 1D figure (all methods on one axis + interpolation lines) and the 2D contour / 3D surface
    figures of one model, from one seed's runs."""
    made: list[FigureFile] = []
    surfaces = lm[lm["kind"].isin(["1d", "2d"])]
    lines = lm[lm["kind"] == "line"]
    seed = _landscape_seed(surfaces if len(surfaces) else lines)
    surfaces = surfaces[surfaces["seed"] == seed]
    if (lines["seed"] == seed).any():
        lines = lines[lines["seed"] == seed]
    one, two = [], []
    for method, setting in series_of(surfaces):
        s = surfaces[(surfaces["method_label"] == method) & (surfaces["setting"] == setting)]
        for kind, path in zip(s["kind"], s["path"], strict=True):
            (one if kind == "1d" else two).append((series_label(method, setting), method, landscape_arrays(path)))
    drawn = [(f"{series_label(m, st)} → {to or '?'}" + ("" if sd == seed else f" (seed {sd})"),
              landscape_arrays(p))
             for m, st, sd, to, p in zip(lines["method_label"], lines["setting"], lines["seed"],
                                         lines["to_method"], lines["path"], strict=True)]
    stem = f"{d}_{slug(model)}"  # d: the figure key (dataset slug, plus the folder when a dataset has several)

    def save(fig: Figure, prefix: str, title: str, caption: str) -> None:
        png, pdf = save_figure(fig, folder / f"{prefix}_{stem}")
        made.append(FigureFile(title, caption, png, pdf))

    if one or drawn:
        save(plot_landscape_1d(one, drawn, f"{name} / {model}: 1D loss landscapes (seed {seed})"),
             "landscape_1d", f"{name} / {model}: 1D landscapes of every method, and the interpolation line",
             f"Left: training loss (log scale) on fixed samples along one filter-normalised random direction "
             f"around each method's final weights of seed {seed}, all methods on the same α range. Right: "
             "loss (black) and accuracy (green) on the straight line between two final models; α = 0 and 1 "
             "are the two models.")
    if two:
        levels = landscape_levels([np.asarray(r["loss"], dtype=float) for _, _, r in two])
        scale = f"{levels[0]:.3g} to {levels[-1]:.3g}"
        save(plot_landscape_2d(two, f"{name} / {model}: 2D loss landscapes (seed {seed})"),
             "landscape_2d", f"{name} / {model}: 2D loss contours on one colour scale",
             f"Training loss on a plane of two filter-normalised random directions around each method's final "
             f"weights (star), seed {seed}. Every map uses the same {len(levels)} log-spaced levels from the "
             f"lowest loss to {LANDSCAPE_CAP_RATIO:g}× it ({scale}); higher losses take the last colour.")
        save(plot_landscape_3d(two, f"{name} / {model}: 2D loss surfaces (seed {seed})"),
             "landscape_3d", f"{name} / {model}: 2D loss surfaces",
             f"The same planes as surfaces of the loss on a log axis, clipped to the same range ({scale}).")
    return made


def save_sharpness_figure(rows: pd.DataFrame, grid: str, folder: Path, order: Sequence[str]) -> FigureFile | None:
    """The sharpness-per-epoch figure of one claims folder (rows labelled by claims.label_cells), None when
    no run logged sharpness."""
    curves = sharpness_curves(rows)
    if curves.empty:
        return None
    stem = folder / f"sharpness_epochs_{re.sub(r'[^A-Za-z0-9_-]+', '_', Path(grid).name)}"
    png, pdf = save_figure(plot_sharpness(rows, curves, grid, order), stem)
    return FigureFile(f"Sharpness per epoch ({Path(grid).name})",
                      "SAM's one-step sharpness on 1,024 fixed, un-augmented training images after every epoch "
                      "(BatchNorm in eval mode; mean of batch-size chunks). Dashed: equal-compute baselines. "
                      "Dotted lines: the epoch at which SAF's and MESA's trajectory loss switches on.", png, pdf)
