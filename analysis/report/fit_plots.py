"""What each method fits under label noise: its training accuracy on the clean-labelled samples and on the
flipped ones (against their noisy and their true label) per epoch, and ESAM's share of flipped samples among
those its descent pass keeps. One figure per claims folder whose runs logged them (metrics.csv)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .figures import FigureFile, save_figure
from .format import TableFile, fmt_pm, slug, write_table
from .plots import cell_styles
from .run_files import ESAM_FLIPPED_SHARE, label_fit_curves

PANELS = (("train_acc_clean", "clean-labelled samples:\npredicted as their (true) label"),
          ("train_acc_flipped_noisy", "flipped samples:\npredicted as their noisy label (memorised)"),
          ("train_acc_flipped_true", "flipped samples:\npredicted as their true label"))


def plot_label_fit(curves: pd.DataFrame, grid: str, order: Sequence[str]) -> Figure:
    """Three panels of training accuracy against epoch, one line per cell (mean over seeds, band min to max),
    and a fourth with ESAM's share of flipped samples among those it kept, beside the flipped fraction of the
    training set (the share a choice blind to the labels would keep)."""
    fig = Figure(figsize=(11.0, 8.0))
    axes = fig.subplots(2, 2).ravel()
    cells = [c for c in order if c in set(curves["cell"])] + sorted(set(curves["cell"]) - set(order))
    styles = cell_styles(cells)
    for ax, (column, title) in zip(axes, PANELS + ((ESAM_FLIPPED_SHARE, ""),), strict=True):
        for cell in cells:
            part = curves[curves["cell"] == cell]
            if column not in part or part[column].isna().all():
                continue
            stats = part.groupby("epoch")[column].agg(["mean", "min", "max", "count"])
            color, ls, marker = styles[cell]
            ax.plot(stats.index + 1, 100 * stats["mean"], ls=ls, color=color, marker=marker, ms=3, lw=1.3,
                    label=f"{cell} ({int(stats['count'].max())} seeds)")
            ax.fill_between(stats.index + 1, 100 * stats["min"], 100 * stats["max"], color=color, alpha=0.1)
        if column == ESAM_FLIPPED_SHARE:
            ax.axhline(100 * curves["flipped_fraction"].mean(), color="grey", ls=":", lw=1)
            ax.text(1, 100 * curves["flipped_fraction"].mean(), " flipped share of the training set", va="top",
                    fontsize=8, color="grey")
            title = "ESAM: flipped samples among those its\ndescent pass keeps (per epoch)"
            if not ax.get_lines()[:-1]:
                ax.text(0.5, 0.5, "no ESAM run logged it", transform=ax.transAxes, ha="center", color="grey")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=4, loc="lower center", frameon=False)
    fig.suptitle(f"What each method fits under label noise: {Path(grid).name}\n(training accuracy of the clean "
                 "pass on each batch as trained, before its step; mean over seeds, band min to max)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def save_label_fit_figure(rows: pd.DataFrame, grid: str, folder: Path, order: Sequence[str]) -> FigureFile | None:
    """The figure of one claims folder (rows labelled by claims.label_cells), None when no run logged the fits."""
    curves = label_fit_curves(rows)
    if curves.empty:
        return None
    stem = folder / f"label_fit_{re.sub(r'[^A-Za-z0-9_-]+', '_', Path(grid).name)}"
    png, pdf = save_figure(plot_label_fit(curves, grid, order), stem)
    return FigureFile(f"What each method fits ({Path(grid).name})",
                      "Training accuracy per epoch on the samples whose label is correct, and on the flipped ones "
                      "against their noisy label (memorisation) and their true label; ESAM's share of flipped "
                      "samples among those its descent pass keeps, beside the flipped share of the training set "
                      "(above it: the selection prefers mislabelled samples).", png, pdf, section="fit")


FIT_TABLE_COLUMNS = (("train_acc_clean", "clean-labelled: fit (%)"),
                     ("train_acc_flipped_noisy", "flipped: noisy label (%)"),
                     ("train_acc_flipped_true", "flipped: true label (%)"))


def label_fit_frame(rows: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Per cell (rows labelled by claims.label_cells): the seeds that logged the fits, each fit at the last epoch
    and ESAM's flipped share among kept samples over all epochs (mean and std over seeds, fractions), and the
    final test accuracy of those same runs."""
    curves = label_fit_curves(rows)
    if curves.empty:
        return pd.DataFrame()
    last = curves[curves["epoch"] == curves.groupby(["cell", "seed"])["epoch"].transform("max")]
    columns = [c for c, _ in FIT_TABLE_COLUMNS]
    per_seed = last.set_index(["cell", "seed"])[columns]
    if ESAM_FLIPPED_SHARE in curves:
        per_seed[ESAM_FLIPPED_SHARE] = curves.groupby(["cell", "seed"])[ESAM_FLIPPED_SHARE].mean()
    acc = rows.set_index(["cell", "seed"])["final_test_acc"]
    per_seed["final_test_acc"] = acc[~acc.index.duplicated()].reindex(per_seed.index)
    stats = per_seed.groupby(level="cell").agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    stats.insert(0, "seeds", per_seed.groupby(level="cell").size())
    cells = [c for c in order if c in stats.index] + sorted(set(stats.index) - set(order))
    return stats.loc[cells].reset_index()


def label_fit_table(rows: pd.DataFrame, grid: str, out: Path, order: Sequence[str]) -> TableFile | None:
    """The numbers behind the label-fit figure: what each cell fits at the end, beside its test accuracy."""
    frame = label_fit_frame(rows, order)
    if frame.empty:
        return None
    shown = pd.DataFrame({"cell": frame["cell"], "seeds": frame["seeds"]})
    for column, title in (*FIT_TABLE_COLUMNS, (ESAM_FLIPPED_SHARE, "ESAM: flipped share kept, mean over epochs (%)"),
                          ("final_test_acc", "final test acc (%)")):
        if f"{column}_mean" in frame:
            shown[title] = [fmt_pm(100 * m, 100 * s, 1) for m, s in
                            zip(frame[f"{column}_mean"], frame[f"{column}_std"], strict=True)]
    note = ("Training accuracy of the last epoch (each batch's clean pass before its step; mean ± std over the "
            "seeds that logged it); the flipped share of the training set is the share a choice blind to the labels "
            "would keep.")
    return write_table(out, f"label_fit_{slug(grid)}", f"What each method fits at the end ({Path(grid).name})",
                       frame, shown, notes=[note], kind="fit")
