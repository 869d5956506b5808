"""The report's figures, drawn only from stored files: rows, metrics.csv, hessian files, landscape npz.

Loaders (`epoch_curves`, `hessian_curves`, `landscape_files`) turn run directories into frames;
`plot_*` functions turn frames into matplotlib Figures (no pyplot: no global state, no GUI
backend); `make_figures` decides which figures the data allow and saves each as PNG and PDF.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench import io
from bench.records import (
    HESSIAN,
    HESSIAN_DENSITY,
    HESSIAN_EPOCHS,
    LANDSCAPE_1D,
    LANDSCAPE_2D,
    LANDSCAPE_LINE_GLOB,
    METRICS,
)

from .report import METHOD_ORDER, _setting_labels, aggregate, dataset_name, is_missing, render_markdown, slug

_KEYS = ("dataset", "model_key", "method_label", "setting", "seed")


@dataclass
class FigureFile:
    title: str
    caption: str
    png: Path
    pdf: Path
    extra: str = ""  # markdown shown after the figure's links (e.g. the numbers read off it)
    section: str = "flatness"  # the report section: "cost" or "flatness"


# ---- series names and colours ---------------------------------------------------------------------
def series_label(method: str, setting: str) -> str:
    return f"{method} [{setting}]" if setting else method


def _colour(method: str) -> str:
    # Fixed per method so a method has the same colour in every figure.
    palette = ("#1f77b4", "#7f7f7f", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#2ca02c", "#ff7f0e")
    if method in METHOD_ORDER:
        return palette[METHOD_ORDER.index(method)]
    return "#17becf"


def _order_key(method: str, setting: str) -> tuple[int, str, str]:
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method, setting


def _series(frame: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = set(zip(frame["method_label"], frame["setting"], strict=True))
    return sorted(pairs, key=lambda p: _order_key(*p))


# ---- loaders --------------------------------------------------------------------------------------
def _runs_with_files(rows: pd.DataFrame) -> list[tuple[pd.Series, Path]]:
    """Finished runs whose directory is on disk (rows read from a results.csv alone have none)."""
    out = []
    for _, r in rows.iterrows():
        path = r.get("run_path")
        if isinstance(path, str) and path and r["status"] == "finished" and Path(path).is_dir():
            out.append((r, Path(path)))
    return out


def epoch_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv of every finished run, with cumulative training time and images processed."""
    frames = []
    for r, path in _runs_with_files(rows):
        try:
            m = pd.read_csv(path / METRICS)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if m.empty or not {"epoch", "test_acc", "epoch_time_s", "images_per_s"} <= set(m.columns):
            continue
        m = m.sort_values("epoch").copy()
        m["train_time_cum"] = m["epoch_time_s"].cumsum()
        # images_per_s is images over training time, so their product is the epoch's images.
        m["images_cum"] = (m["images_per_s"] * m["epoch_time_s"]).cumsum()
        for k in _KEYS:
            m[k] = r[k]
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def hessian_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """λ_max and trace at chosen epochs (hessian_epochs.csv) plus the final hessian.json point.

    Epochs follow metrics.csv: epoch e is the model after training epoch e (0-based); the final
    measurement sits at the last completed epoch unless the epoch file already has it.
    """
    frames = []
    for r, path in _runs_with_files(rows):
        parts = []
        if (path / HESSIAN_EPOCHS).exists():
            try:
                parts.append(pd.read_csv(path / HESSIAN_EPOCHS)[["epoch", "lambda_max", "trace"]])
            except (OSError, ValueError, KeyError, pd.errors.EmptyDataError):
                pass
        try:
            final = json.loads((path / HESSIAN).read_text())
        except (OSError, ValueError):
            final = None
        done = r.get("epochs_completed", r.get("epochs"))
        if not isinstance(final, dict) or is_missing(done) or final.get("epoch") != int(done):
            final = None  # measured another model than the run's last: not its final point
        if final is not None and not is_missing(done):
            last = int(done) - 1
            if not any((p["epoch"] == last).any() for p in parts):
                parts.append(pd.DataFrame([{"epoch": last, "lambda_max": final.get("lambda_max"),
                                            "trace": final.get("trace")}]))
        if parts:
            h = pd.concat(parts, ignore_index=True)
            for k in _KEYS:
                h[k] = r[k]
            frames.append(h)
    return pd.concat(frames, ignore_index=True).sort_values("epoch") if frames else pd.DataFrame()


def landscape_files(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per stored landscape: kind (1d, 2d, line), path and the run's keys."""
    from .landscape import load_landscape

    recs = []
    for r, path in _runs_with_files(rows):
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
            recs.append({**{k: r[k] for k in _KEYS}, "kind": kind, "path": str(file),
                         "to_method": meta.get("to_method", ""), "to_run_dir": meta.get("to_run_dir", "")})
    return pd.DataFrame(recs)


def density_files(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per stored Hessian density (hessian_density.npz): the run's keys, the path and its meta."""
    from .landscape import load_landscape

    recs = []
    for r, path in _runs_with_files(rows):
        file = path / HESSIAN_DENSITY
        if not file.exists():
            continue
        try:
            arrays, meta = load_landscape(file)
        except (OSError, ValueError, KeyError):
            continue
        if not {"nodes", "weights"} <= set(arrays):
            continue
        recs.append({**{k: r[k] for k in _KEYS}, "path": str(file), "nodes": arrays["nodes"],
                     "weights": arrays["weights"], "n_iter": meta.get("n_iter"), "n_v": meta.get("n_v"),
                     "samples": meta.get("samples"), "command": meta.get("command", "")})
    return pd.DataFrame(recs)


# ---- saving ---------------------------------------------------------------------------------------
def save_figure(fig: Figure, stem: Path) -> tuple[Path, Path]:
    """PNG and PDF beside each other, each written atomically, without timestamps (stable files)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    io.atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=150,
                                               metadata={"Software": None}), binary=True)
    io.atomic_write(pdf, lambda f: fig.savefig(f, format="pdf",
                                               metadata={"CreationDate": None, "Creator": None}), binary=True)
    return png, pdf


def _panels(n: int, rows: int = 1, width: float = 4.6, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * n, height * rows), layout="constrained")
    return fig, fig.subplots(rows, n, squeeze=False)


# ---- figures --------------------------------------------------------------------------------------
def plot_throughput(cells: pd.DataFrame, title: str) -> Figure:
    """Bars of images/s per method (± std over seeds), each labelled with its share of the base optimizer."""
    models = list(dict.fromkeys(cells["model_key"]))
    fig, axes = _panels(len(models))
    for ax, model in zip(axes[0], models, strict=True):
        c = cells[cells["model_key"] == model]
        series = _series(c)
        x = np.arange(len(series))
        for i, (method, setting) in enumerate(series):
            r = c[(c["method_label"] == method) & (c["setting"] == setting)].iloc[0]
            std = 0.0 if is_missing(r["img_s_std"]) else r["img_s_std"]
            ax.bar(i, r["img_s_mean"], yerr=std, color=_colour(method), capsize=3)
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
        for method, setting in _series(pd.concat([c, p]) if len(c) or len(p) else c):
            label = series_label(method, setting)
            s = c[(c["method_label"] == method) & (c["setting"] == setting)] if len(c) else c
            if len(s):
                mean = s.groupby("epoch")[["train_time_cum", "test_acc"]].mean()
                left.plot(mean["train_time_cum"], 100 * mean["test_acc"], marker="o", ms=3,
                          color=_colour(method), label=label)
                _mean_band(right, s.assign(epoch=s["epoch"] + 1), "test_acc", label, _colour(method), scale=100.0)
                continue
            if len(p):
                s = p[(p["method_label"] == method) & (p["setting"] == setting)]
                left.scatter(s["train_time_s"], 100 * s["final_test_acc"], color=_colour(method), label=label)
                right.scatter(pd.to_numeric(s["epochs_done"], errors="coerce"), 100 * s["final_test_acc"],
                              color=_colour(method), label=label)
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


def _mean_band(ax: Any, frame: pd.DataFrame, column: str, label: str, colour: str,
               scale: float = 1.0) -> None:
    stats = frame.groupby("epoch")[column].agg(["mean", "std", "count"])
    x = stats.index.to_numpy()
    mean = scale * stats["mean"].to_numpy(dtype=float)
    std = scale * stats["std"].fillna(0.0).to_numpy(dtype=float)
    ax.plot(x, mean, marker="o", ms=3, color=colour, label=label)
    if (stats["count"] > 1).any():
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)


def plot_lambda(cells: pd.DataFrame, curves: pd.DataFrame, title: str) -> Figure:
    """λ_max per method at the end of training (bars, ± std) and over epochs (mean ± std band)."""
    with_end = cells[cells["lambda_max_mean"].notna()] if len(cells) else cells
    # Only the final measurement (no hessian_epochs): the bars already show it, a one-epoch "curve" would not
    over_training = len(curves) > 0 and curves["epoch"].nunique() > 1
    panels = int(len(with_end) > 0) + int(over_training)
    fig, axes = _panels(max(panels, 1))
    i = 0
    if len(with_end):
        ax = axes[0, i]
        i += 1
        labels = []
        for k, (_, r) in enumerate(with_end.iterrows()):
            std = 0.0 if is_missing(r["lambda_max_std"]) else r["lambda_max_std"]
            ax.bar(k, r["lambda_max_mean"], yerr=std, color=_colour(r["method_label"]), capsize=3)
            labels.append(f"{r['model_key']}\n{series_label(r['method_label'], r['setting'])}")
        ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set(title="end of training", ylabel=r"$\lambda_{\max}$")
        ax.grid(axis="y", alpha=0.3)
    if over_training:
        ax = axes[0, i]
        for model in dict.fromkeys(curves["model_key"]):
            c = curves[curves["model_key"] == model]
            for method, setting in _series(c):
                s = c[(c["method_label"] == method) & (c["setting"] == setting)]
                label = series_label(method, setting)
                if curves["model_key"].nunique() > 1:
                    label = f"{model} {label}"
                _mean_band(ax, s, "lambda_max", label, _colour(method))
        ax.set(title="over training", xlabel="epoch", ylabel=r"$\lambda_{\max}$")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


# ---- landscapes -----------------------------------------------------------------------------------
LANDSCAPE_CAP_RATIO = 100.0  # 2D/3D colour scale: from the lowest loss of the figure to this many times it
LANDSCAPE_LEVELS = 21


def landscape_levels(surfaces: Sequence[np.ndarray], cap: float | None = None,
                     n: int = LANDSCAPE_LEVELS) -> np.ndarray:
    """Contour levels shared by every map of a figure: log-spaced from the lowest loss to `cap`.

    `cap` defaults to LANDSCAPE_CAP_RATIO times the lowest loss (never above the highest one), as in
    Li et al.'s loss-landscape plots, which cut the scale off so the basins keep their levels; higher
    losses take the last colour. Log spacing gives the basin (a few × the minimum) as many levels as
    the walls (tens of × the minimum).
    """
    finite = np.concatenate([np.asarray(s, dtype=float)[np.isfinite(s)].ravel() for s in surfaces]) \
        if surfaces else np.array([])
    positive = finite[finite > 0]
    if not positive.size:  # no positive loss to put on a log scale: plain linear levels
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        return np.linspace(lo, hi if hi > lo else lo + 1.0, n)
    lo, hi = float(positive.min()), float(positive.max())
    top = min(hi, lo * LANDSCAPE_CAP_RATIO) if cap is None else float(cap)
    if top <= lo:
        top = lo * 1.01 + 1e-12
    return np.geomspace(lo, top, n)


def _grid_edges(n: int) -> tuple[int, int]:
    cols = min(n, 5)
    return cols, math.ceil(n / cols)


def plot_landscape_1d(curves: Sequence[tuple[str, str, dict]], lines: Sequence[tuple[str, dict]],
                      title: str, log_y: bool = True) -> Figure:
    """Every method's 1D curve on one axis (left) and the interpolation lines between final models (right).

    `curves`: (label, method, 1D result); `lines`: (label, line result). All curves share the α axis
    and the (log) loss axis, so widths and heights compare by eye.
    """
    fig = Figure(figsize=(5.4 * (2 if lines else 1), 4.0), layout="constrained")
    # One loss axis for both panels: a barrier on the line reads against the walls of the random directions.
    axes = fig.subplots(1, 2 if lines else 1, squeeze=False, sharey=True)
    ax = axes[0, 0]
    for label, method, r in curves:
        ax.plot(r["alphas"], r["loss"], color=_colour(method), label=label, lw=1.6)
    if curves:
        lo = min(float(np.min(r["alphas"])) for _, _, r in curves)
        hi = max(float(np.max(r["alphas"])) for _, _, r in curves)
        ax.set_xlim(lo, hi)
    ax.set(xlabel="α along a filter-normalised random direction", ylabel="training loss",
           yscale="log" if log_y else "linear", title="around each final model")
    ax.axvline(0.0, color="k", lw=0.6, ls=":")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if lines:
        ax = axes[0, 1]
        twin = ax.twinx()
        for i, (label, r) in enumerate(lines):
            style = ("-", "--", "-.", ":")[i % 4]
            ax.plot(r["alphas"], r["loss"], color="k", ls=style, marker="o", ms=2.5, label=f"loss: {label}")
            acc = np.asarray(r.get("accuracy", []), dtype=float)
            if acc.size and np.isfinite(acc).any():
                twin.plot(r["alphas"], 100 * acc, color="#2ca02c", ls=style, lw=1.0, label=f"accuracy: {label}")
        for a in (0.0, 1.0):
            ax.axvline(a, color="k", lw=0.6, ls=":")
        ax.set(xlabel="α: (1 − α)·θ_from + α·θ_to", title="between two final models (same loss axis)")
        ax.tick_params(labelleft=True)
        twin.set_ylabel("accuracy (%)", color="#2ca02c")
        twin.tick_params(axis="y", colors="#2ca02c")
        ax.grid(alpha=0.3, which="both")
        handles = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7)
    fig.suptitle(title)
    return fig


def plot_landscape_2d(entries: Sequence[tuple[str, str, dict]], title: str,
                      cap: float | None = None) -> Figure:
    """Contour maps of each method's 2D landscape on one shared set of log-spaced levels (landscape_levels).

    `entries`: (label, method, 2D result). One colour bar serves every panel; the star marks the
    trained weights (the origin).
    """
    from matplotlib.colors import BoundaryNorm

    cols, rows = _grid_edges(len(entries))
    fig = Figure(figsize=(3.3 * cols + 1.0, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    levels = landscape_levels([np.asarray(e[2]["loss"], dtype=float) for e in entries], cap)
    norm = BoundaryNorm(levels, ncolors=256, extend="max")
    filled = None
    for ax, (label, method, r) in zip(axes.flat, entries, strict=False):
        gx, gy = np.meshgrid(np.asarray(r["xs"]), np.asarray(r["ys"]))
        loss = np.asarray(r["loss"], dtype=float)
        filled = ax.contourf(gx, gy, loss, levels=levels, cmap="viridis", norm=norm, extend="max")
        ax.contour(gx, gy, loss, levels=levels, colors="w", linewidths=0.35, alpha=0.6)
        ax.plot([0], [0], marker="*", color="#d62728", ms=9, mec="w", mew=0.6)
        ax.set_title(label, color=_colour(method), fontsize=10)
        ax.set(xlabel="direction 1", aspect="equal")
        ax.set_ylabel("direction 2")
    for ax in axes.flat[len(entries):]:
        ax.set_visible(False)
    if filled is not None:
        bar = fig.colorbar(filled, ax=axes, label="training loss (log-spaced levels, capped)", shrink=0.9)
        ticks = np.geomspace(levels[0], levels[-1], 5)
        bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
    fig.suptitle(title)
    return fig


def plot_landscape_3d(entries: Sequence[tuple[str, str, dict]], title: str,
                      cap: float | None = None) -> Figure:
    """Surfaces of log10(loss) per method (as in the SAF paper's surface figures), clipped at the same cap
    as the contour maps and drawn on one z range."""
    from matplotlib.colors import Normalize

    cols, rows = _grid_edges(len(entries))
    fig = Figure(figsize=(3.6 * cols, 3.4 * rows), layout="constrained")
    levels = landscape_levels([np.asarray(e[2]["loss"], dtype=float) for e in entries], cap)
    lo, hi = float(np.log10(levels[0])), float(np.log10(levels[-1]))
    norm = Normalize(lo, hi)
    for i, (label, method, r) in enumerate(entries):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        gx, gy = np.meshgrid(np.asarray(r["xs"]), np.asarray(r["ys"]))
        loss = np.clip(np.asarray(r["loss"], dtype=float), levels[0], levels[-1])
        z = np.log10(loss)
        ax.plot_surface(gx, gy, z, cmap="viridis", norm=norm, linewidth=0, antialiased=True, rstride=1, cstride=1)
        ax.set_zlim(lo, hi)
        ticks = np.linspace(lo, hi, 4)
        ax.set_zticks(ticks, labels=[f"{10 ** t:.2g}" for t in ticks])
        ax.set_title(label, color=_colour(method), fontsize=10)
        ax.set(xlabel="dir. 1", ylabel="dir. 2")
        ax.set_zlabel("loss (log)")
        ax.view_init(elev=30, azim=-60)
    fig.suptitle(title)
    return fig


def plot_overhead(panels: Sequence[Any], title: str, per_row: int = 4) -> Figure:
    """Step time / SGD's per method, one panel per measurement (overhead_report.StepPanel), with the
    quartiles over rounds as error bars and each applicable upper target as a black tick."""
    n_rows = math.ceil(len(panels) / per_row)
    fig, axes = _panels(min(per_row, len(panels)), rows=n_rows, width=3.8, height=3.4)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        methods = list(panel.bars)
        for i, m in enumerate(methods):
            median, q1, q3 = panel.bars[m]
            err = None if is_missing(q1) or is_missing(q3) else [[max(median - q1, 0.0)], [max(q3 - median, 0.0)]]
            ax.bar(i, median, yerr=err, color=_colour(m.removesuffix("_official")), capsize=3,
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
    from .hessian import smooth_density

    series = _series(frame)
    lo = min(float(np.min(n)) for n in frame["nodes"])
    hi = max(float(np.max(n)) for n in frame["nodes"])
    sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
    fig = Figure(figsize=(3.2 * len(series) + 0.6, 3.3), layout="constrained")
    axes = fig.subplots(1, len(series), squeeze=False, sharex=True, sharey=True)[0]
    top = 0.0
    for ax, (method, setting) in zip(axes, series, strict=True):
        s = frame[(frame["method_label"] == method) & (frame["setting"] == setting)].sort_values("seed")
        for k, (_, r) in enumerate(s.iterrows()):
            curve = smooth_density(r["nodes"], r["weights"], sigma, grid)
            top = max(top, float(curve.max()))
            ax.plot(grid, np.maximum(curve, 1e-300), color=_colour(method), lw=1.2,
                    alpha=1.0 if k == 0 else 0.55, ls=("-", "--", ":", "-.")[k % 4], label=f"seed {r['seed']}")
        ax.axvline(0.0, color="k", lw=0.6, ls=":")
        ax.set_title(series_label(method, setting), color=_colour(method), fontsize=10)
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
    from .flatness import density_summary
    from .report import fmt_pm, fmt_sig

    recs = []
    for method, setting in _series(frame):
        s = frame[(frame["method_label"] == method) & (frame["setting"] == setting)]
        got = pd.DataFrame([density_summary(n, w) for n, w in zip(s["nodes"], s["weights"], strict=True)])
        mean, std = got.mean(), got.std() if len(got) > 1 else got.mean() * math.nan
        recs.append({"Method": series_label(method, setting), "Seeds": " ".join(str(x) for x in sorted(s["seed"])),
                     "Largest eigenvalue": fmt_sig(mean["largest"], std["largest"]),
                     "Most negative eigenvalue": fmt_sig(mean["smallest"], std["smallest"]),
                     "Mass below 0 (%)": fmt_pm(100 * mean["negative_mass"], 100 * std["negative_mass"])})
    return pd.DataFrame(recs)


# ---- which figures the data allow ----------------------------------------------------------------
def save_overhead_figure(panels: Sequence[Any], folder: Path) -> FigureFile:
    png, pdf = save_figure(plot_overhead(panels, "Step time per method (× SGD's)"), folder / "overhead_steps")
    return FigureFile("Step time per method, every overhead measurement",
                      "Median step time / SGD's over interleaved rounds (bars: quartiles); black ticks: the "
                      "suite's upper targets on that device; hatched: the official SAF store design.", png, pdf,
                      section="cost")



def cost_targets(curves: pd.DataFrame, points: pd.DataFrame) -> dict[str, float]:
    """model -> the base optimizer's final test accuracy (mean over seeds of its last epoch), when there is
    exactly one base cell of the model (else the dashed line would be ambiguous)."""
    from .time_to_target import BASE_LABELS

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


def _final_points(rows: pd.DataFrame) -> pd.DataFrame:
    ok = rows[rows["status"] == "finished"].copy()
    if ok.empty or "train_time_s" not in ok.columns:
        return pd.DataFrame()
    done = ok["epochs_completed"] if "epochs_completed" in ok.columns else ok.get("epochs")
    samples = ok["num_samples"] if "num_samples" in ok.columns else np.nan
    ok["images"] = pd.to_numeric(samples, errors="coerce") * pd.to_numeric(done, errors="coerce")
    ok["epochs_done"] = pd.to_numeric(done, errors="coerce")
    return ok


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
        r = r.assign(setting=_setting_labels(r))  # what sets cells apart within this folder, not the dataset
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
    from .landscape import load_landscape

    made: list[FigureFile] = []
    surfaces = lm[lm["kind"].isin(["1d", "2d"])]
    lines = lm[lm["kind"] == "line"]
    seed = _landscape_seed(surfaces if len(surfaces) else lines)
    surfaces = surfaces[surfaces["seed"] == seed]
    if (lines["seed"] == seed).any():
        lines = lines[lines["seed"] == seed]
    one, two = [], []
    for method, setting in _series(surfaces):
        s = surfaces[(surfaces["method_label"] == method) & (surfaces["setting"] == setting)]
        for kind, path in zip(s["kind"], s["path"], strict=True):
            (one if kind == "1d" else two).append((series_label(method, setting), method, load_landscape(path)[0]))
    drawn = [(f"{series_label(m, st)} → {to or '?'}" + ("" if sd == seed else f" (seed {sd})"),
              load_landscape(p)[0])
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
