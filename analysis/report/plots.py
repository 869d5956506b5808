"""The report's charts: frames in, matplotlib Figures out (no files, no pyplot: no global state, no GUI backend).

Every chart draws a frame with documented columns: the cells frame (analysis.report.aggregate), curves
read by analysis.report.run_files, overhead StepPanels. A method has one colour in every chart. Which
charts the data allow, and where they are saved, is analysis.report.figures's; the landscape charts
are in analysis.report.landscape_plots.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import optimizers
from analysis.flatness import density_summary
from analysis.measure.hessian import smooth_density

from .aggregate import method_order
from .format import fmt_pm, fmt_sig, is_missing
from .overhead import StepPanel


# ---- series names, colours, panels ---------------------------------------------------------------------
def series_label(method: str, setting: str) -> str:
    return f"{method} [{setting}]" if setting else method


# By place in the display order, so a method has the same colour in every figure; methods past the eighth
# (plugins) take the rest, and a method not installed here the last.
PALETTE = ("#1f77b4", "#7f7f7f", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#2ca02c", "#ff7f0e", "#bcbd22",
           "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#17becf")


def colour(method: str) -> str:
    order = method_order()
    return PALETTE[min(order.index(method), len(PALETTE) - 2)] if method in order else PALETTE[-1]


# A cell is a method, or one of its variants ("esam[beta=1.0, gamma=0.5]", "sgd_half"): the method's colour,
# and a line style per variant, so that a variant reads as its method's and differs from its siblings.
VARIANT_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)))
VARIANT_MARKERS = ("s", "^", "v", "D", "x", "P")


def method_of_cell(cell: str) -> str:
    return re.split(r"[\[_]", cell, maxsplit=1)[0]


def cell_styles(cells: Sequence[str]) -> dict[str, tuple[str, object, str]]:
    """(colour, line style, marker) per cell: the method's colour; solid for the method, a style per variant."""
    seen: dict[str, int] = {}
    styles = {}
    for cell in cells:
        method = method_of_cell(cell)
        if cell == method:
            styles[cell] = (colour(method), "-", "o")
            continue
        k = seen.get(method, 0)
        seen[method] = k + 1
        styles[cell] = (colour(method), VARIANT_STYLES[k % len(VARIANT_STYLES)],
                        VARIANT_MARKERS[k % len(VARIANT_MARKERS)])
    return styles


def _order_key(method: str, setting: str) -> tuple[int, str, str]:
    order = method_order()
    rank = order.index(method) if method in order else len(order)
    return rank, method, setting


def series_of(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (method_label, setting) pairs of a frame in the report's method order: one series each."""
    pairs = set(zip(frame["method_label"], frame["setting"], strict=True))
    return sorted(pairs, key=lambda p: _order_key(*p))


def panel_grid(n: int, rows: int = 1, width: float = 4.6, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * n, height * rows), layout="constrained")
    return fig, fig.subplots(rows, n, squeeze=False)


# ---- charts ---------------------------------------------------------------------------------------
def plot_throughput(cells: pd.DataFrame, title: str) -> Figure:
    """Bars of images/s per method (± std over seeds), each labelled with its share of the base optimizer."""
    models = list(dict.fromkeys(cells["model_key"]))
    fig, axes = panel_grid(len(models))
    for ax, model in zip(axes[0], models, strict=True):
        c = cells[cells["model_key"] == model]
        series = series_of(c)
        x = np.arange(len(series))
        for i, (method, setting) in enumerate(series):
            r = c[(c["method_label"] == method) & (c["setting"] == setting)].iloc[0]
            std = 0.0 if is_missing(r["img_s_std"]) else r["img_s_std"]
            ax.bar(i, r["img_s_mean"], yerr=std, color=colour(method), capsize=3)
            if not is_missing(r["share"]) and not is_missing(r["img_s_mean"]):
                ax.annotate(f"×{r['share']:.2f}", (i, r["img_s_mean"] + std), ha="center", va="bottom",
                            fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, [series_label(*s) for s in series], rotation=30, ha="right")
        ax.set(title=model, ylabel="training images/s")
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_cost(curves: pd.DataFrame, points: pd.DataFrame, title: str,
              targets: dict[str, float] | None = None) -> Figure:
    """Test accuracy against cumulative training seconds (left) and against epochs (right), one row per
    model, one curve per method (mean over seeds; right: ± one std band).

    `curves` are per-epoch rows of metrics.csv; `points` are the final results of runs without a metrics
    file (markers only). `targets` (model -> accuracy fraction) draws the base optimizer's final accuracy
    as a dashed line, the target of the time-to-target table.
    """
    models = list(dict.fromkeys(list(curves.get("model_key", [])) + list(points.get("model_key", []))))
    fig = Figure(figsize=(10.0, 3.7 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), 2, squeeze=False, sharey="row")
    for j, model in enumerate(models):
        left, right = axes[j, 0], axes[j, 1]
        c = curves[curves["model_key"] == model] if len(curves) else curves
        p = points[points["model_key"] == model] if len(points) else points
        seen: dict[str, int] = {}
        for method, setting in series_of(pd.concat([c, p]) if len(c) or len(p) else c):
            label = series_label(method, setting)
            nth = seen[method] = seen.get(method, -1) + 1  # a method's settings in its colour, a style each
            style = "-" if nth == 0 else VARIANT_STYLES[(nth - 1) % len(VARIANT_STYLES)]
            s = c[(c["method_label"] == method) & (c["setting"] == setting)] if len(c) else c
            if len(s):
                mean = s.groupby("epoch")[["train_time_cum", "test_acc"]].mean()
                left.plot(mean["train_time_cum"], 100 * mean["test_acc"], marker="o", ms=3, ls=style,
                          color=colour(method), label=label)
                mean_band(right, s.assign(epoch=s["epoch"] + 1), "test_acc", label, colour(method), scale=100.0,
                          ls=style)
                continue
            if len(p):
                s = p[(p["method_label"] == method) & (p["setting"] == setting)]
                left.scatter(s["train_time_s"], 100 * s["final_test_acc"], color=colour(method), label=label)
                right.scatter(pd.to_numeric(s["epochs_done"], errors="coerce"), 100 * s["final_test_acc"],
                              color=colour(method), label=label)
        target = (targets or {}).get(model)
        for ax in (left, right):
            if target is not None and not is_missing(target):
                ax.axhline(100 * target, color="k", lw=0.8, ls="--", label="base's final accuracy")
            ax.grid(alpha=0.3)
            ax.set_ylabel("test accuracy (%)")
        left.set(title=f"{model}: against training time", xlabel="training wall-clock (s, sum of epoch times)")
        right.set(title=f"{model}: against epochs", xlabel="epochs trained")
        right.tick_params(labelleft=True)
        right.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def mean_band(ax: Axes, frame: pd.DataFrame, column: str, label: str, colour: str,
              scale: float = 1.0, ls: object = "-") -> None:
    stats = frame.groupby("epoch")[column].agg(["mean", "std", "count"])
    x = stats.index.to_numpy()
    mean = scale * stats["mean"].to_numpy(dtype=float)
    std = scale * stats["std"].fillna(0.0).to_numpy(dtype=float)
    ax.plot(x, mean, marker="o", ms=3, color=colour, label=label, ls=ls)
    if (stats["count"] > 1).any():
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)


def plot_lambda(cells: pd.DataFrame, curves: pd.DataFrame, title: str) -> Figure:
    """λ_max per method at the end of training (bars, ± std) and over epochs (mean ± std band)."""
    with_end = cells[cells["lambda_max_mean"].notna()] if len(cells) else cells
    # Only the final measurement (no hessian_epochs): the bars already show it, a one-epoch "curve" would not
    over_training = len(curves) > 0 and curves["epoch"].nunique() > 1
    # Under label noise: λ_max of the same images with their true labels, of the flipped ones alone.
    views = [(c, t) for c, t in (("lambda_max_true_labels", "same images, true labels"),
                                 ("lambda_max_flipped", "flipped images alone"))
             if over_training and c in curves and curves[c].notna().any()]
    shown = int(len(with_end) > 0) + int(over_training) + len(views)
    fig, axes = panel_grid(max(shown, 1))
    i = 0
    if len(with_end):
        ax = axes[0, i]
        i += 1
        labels = []
        for k, (_, r) in enumerate(with_end.iterrows()):
            std = 0.0 if is_missing(r["lambda_max_std"]) else r["lambda_max_std"]
            ax.bar(k, r["lambda_max_mean"], yerr=std, color=colour(r["method_label"]), capsize=3)
            labels.append(f"{r['model_key']}\n{series_label(r['method_label'], r['setting'])}")
        ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set(title="end of training", ylabel=r"$\lambda_{\max}$")
        ax.grid(axis="y", alpha=0.3)
    course_axes = []
    for column, what in [("lambda_max", "over training")] * int(over_training) + views:
        ax = axes[0, i]
        i += 1
        course_axes.append(ax)
        for model in dict.fromkeys(curves["model_key"]):
            c = curves[curves["model_key"] == model]
            for method, setting in series_of(c):
                s = c[(c["method_label"] == method) & (c["setting"] == setting)].dropna(subset=[column])
                label = series_label(method, setting)
                if curves["model_key"].nunique() > 1:
                    label = f"{model} {label}"
                if len(s):
                    mean_band(ax, s, column, label, colour(method))
        ax.set(title=what, xlabel="epoch", ylabel=r"$\lambda_{\max}$")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if len(course_axes) > 1:  # one y scale, so the views compare at a glance
        low = min(a.get_ylim()[0] for a in course_axes)
        high = max(a.get_ylim()[1] for a in course_axes)
        for a in course_axes:
            a.set_ylim(low, high)
    fig.suptitle(title)
    return fig


def plot_overhead(steps: Sequence[StepPanel], title: str, per_row: int = 4) -> Figure:
    """Step time / SGD's per method, one panel per measurement (overhead.StepPanel), with the
    quartiles over rounds as error bars and each applicable upper target as a black tick."""
    n_rows = math.ceil(len(steps) / per_row)
    fig, axes = panel_grid(min(per_row, len(steps)), rows=n_rows, width=3.8, height=3.4)
    for ax in axes.flat[len(steps):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, steps, strict=False):
        methods = list(panel.bars)
        for i, m in enumerate(methods):
            median, q1, q3 = panel.bars[m]
            err = None if is_missing(q1) or is_missing(q3) else [[max(median - q1, 0.0)], [max(q3 - median, 0.0)]]
            ax.bar(i, median, yerr=err, color=colour(m.removesuffix("_official")), capsize=3,
                   hatch="//" if m.endswith("_official") else None)
            ax.annotate(f"{median:.2f}", (i, median), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 3), textcoords="offset points")
            for t in panel.targets:
                if t.method == m and t.high is not None:
                    ax.hlines(t.high, i - 0.45, i + 0.45, colors="k", lw=1.2)
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
        ax.set(title=panel.title, ylabel="step time / SGD's")
        ax.title.set_fontsize(9)
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_hessian_density(frame: pd.DataFrame, title: str, points: int = 600) -> Figure:
    """Eigenvalue density per method (one panel each, one line per seed), log density as in PyHessian's
    papers. Every curve is re-smoothed with one Gaussian width (1% of the figure's eigenvalue range) on
    one grid, and the panels share both axes, so the spectra compare across methods."""
    shown = series_of(frame)
    lo = min(float(np.min(n)) for n in frame["nodes"])
    hi = max(float(np.max(n)) for n in frame["nodes"])
    sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
    fig = Figure(figsize=(3.2 * len(shown) + 0.6, 3.3), layout="constrained")
    axes = fig.subplots(1, len(shown), squeeze=False, sharex=True, sharey=True)[0]
    top = 0.0
    for ax, (method, setting) in zip(axes, shown, strict=True):
        s = frame[(frame["method_label"] == method) & (frame["setting"] == setting)].sort_values("seed")
        for k, (_, r) in enumerate(s.iterrows()):
            curve = smooth_density(r["nodes"], r["weights"], sigma, grid)
            top = max(top, float(curve.max()))
            ax.plot(grid, np.maximum(curve, 1e-300), color=colour(method), lw=1.2,
                    alpha=1.0 if k == 0 else 0.55, ls=("-", "--", ":", "-.")[k % 4], label=f"seed {r['seed']}")
        ax.axvline(0.0, color="k", lw=0.6, ls=":")
        ax.set_title(series_label(method, setting), color=colour(method), fontsize=10)
        ax.set_xlabel("eigenvalue")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set(ylabel="density (log)", yscale="log")
    if top > 0:
        axes[0].set_ylim(top * 1e-7, top * 3)
    fig.suptitle(title)
    return fig


def density_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method: the largest and the most negative Ritz value of the density and the weight below zero,
    mean ± std over the seeds with a density."""
    recs = []
    for method, setting in series_of(frame):
        s = frame[(frame["method_label"] == method) & (frame["setting"] == setting)]
        got = pd.DataFrame([density_summary(n, w) for n, w in zip(s["nodes"], s["weights"], strict=True)])
        mean, std = got.mean(), got.std() if len(got) > 1 else got.mean() * math.nan
        recs.append({"Method": series_label(method, setting), "Seeds": " ".join(str(x) for x in sorted(s["seed"])),
                     "Largest eigenvalue": fmt_sig(mean["largest"], std["largest"]),
                     "Most negative eigenvalue": fmt_sig(mean["smallest"], std["smallest"]),
                     "Mass below 0 (%)": fmt_pm(100 * mean["negative_mass"], 100 * std["negative_mass"])})
    return pd.DataFrame(recs)



def plot_sharpness(rows: pd.DataFrame, curves: pd.DataFrame, grid: str, order: Sequence[str]) -> Figure:
    """SAM's one-step sharpness against epoch, one curve per cell: mean over seeds with a min-to-max band
    (the SAF paper's Figure 4b). `curves`: run_files.sharpness_curves of `rows` (claims-labelled rows,
    whose SAF and MESA hyperparameters mark the epoch their trajectory loss switches on)."""
    fig = Figure(figsize=(9.0, 6.5))
    ax = fig.subplots()
    cells = [c for c in order if c in set(curves["cell"])] + sorted(set(curves["cell"]) - set(order))
    styles = cell_styles(cells)  # a variant in its method's colour, with its own line style
    for cell in cells:
        stats = curves[curves["cell"] == cell].groupby("epoch")["sharpness"].agg(["mean", "min", "max", "count"])
        color, ls, marker = styles[cell]
        ax.plot(stats.index + 1, stats["mean"], ls=ls, color=color, marker=marker, ms=3, lw=1.3,
                label=f"{cell} ({int(stats['count'].max())} seeds)")
        ax.fill_between(stats.index + 1, stats["min"], stats["max"], color=color, alpha=0.1)
    starts: dict[int, list[str]] = {}
    for method in (m for m in order if m in optimizers.methods()):  # the epoch each method's spec switches on
        part = rows[rows["cell"] == method]
        spec = optimizers.method_spec(method)
        columns = [f"hp_{h.name}" for h in spec.hparams]
        if len(part) and all(c in part for c in columns):
            start = int(spec.active_from({c.removeprefix("hp_"): part[c].iloc[0] for c in columns}))
            if start > 0:
                starts.setdefault(start, []).append(spec.display)
    for start, names in starts.items():
        ax.axvline(start + 1, color="grey", lw=0.8, ls=":")
        ax.text(start + 1.1, ax.get_ylim()[1], f"{' & '.join(names)} on", va="top", fontsize=8, color="grey")
    ax.set_xlabel("epoch (after training it)")
    ax.set_ylabel("L(w + ρ g/‖g‖) − L(w), ρ = 0.05")
    ax.set_yscale("log")
    ax.set_title(f"SAM sharpness per epoch: {Path(grid).name}\n(mean over seeds; band: min to max)", fontsize=10)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    rows_of_legend = -(-len(labels) // 4)
    fig.legend(handles, labels, fontsize=8, ncol=4, loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.035 * rows_of_legend + 0.01, 1, 1))
    return fig
