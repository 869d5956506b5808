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

from .report import METHOD_ORDER, dataset_name, is_missing, slug

METRICS = "metrics.csv"
HESSIAN = "hessian.json"
HESSIAN_EPOCHS = "hessian_epochs.csv"
LANDSCAPE_1D = "landscape_1d.npz"
LANDSCAPE_2D = "landscape_2d.npz"
LANDSCAPE_LINE = "landscape_line_*.npz"
_KEYS = ("dataset", "model_key", "method_label", "setting", "seed")


@dataclass
class FigureFile:
    title: str
    caption: str
    png: Path
    pdf: Path


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
        found += [("line", p) for p in sorted(path.glob(LANDSCAPE_LINE))]
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


def plot_cost(curves: pd.DataFrame, points: pd.DataFrame, title: str) -> Figure:
    """Test accuracy against training time (top) and images processed (bottom), one line per method.

    `curves` are per-epoch means over seeds from metrics.csv; `points` are the final results of runs
    without a metrics file (shown as markers only).
    """
    models = list(dict.fromkeys(list(curves.get("model_key", [])) + list(points.get("model_key", []))))
    fig, axes = _panels(len(models), rows=2)
    for j, model in enumerate(models):
        top, bottom = axes[0, j], axes[1, j]
        c = curves[curves["model_key"] == model] if len(curves) else curves
        p = points[points["model_key"] == model] if len(points) else points
        for method, setting in _series(pd.concat([c, p]) if len(c) or len(p) else c):
            label = series_label(method, setting)
            if len(c):
                s = c[(c["method_label"] == method) & (c["setting"] == setting)]
                if len(s):
                    mean = s.groupby("epoch")[["train_time_cum", "images_cum", "test_acc"]].mean()
                    top.plot(mean["train_time_cum"], 100 * mean["test_acc"], marker="o", ms=3,
                             color=_colour(method), label=label)
                    bottom.plot(mean["images_cum"], 100 * mean["test_acc"], marker="o", ms=3,
                                color=_colour(method), label=label)
                    continue
            if len(p):
                s = p[(p["method_label"] == method) & (p["setting"] == setting)]
                top.scatter(s["train_time_s"], 100 * s["final_test_acc"], color=_colour(method), label=label)
                bottom.scatter(s["images"], 100 * s["final_test_acc"], color=_colour(method), label=label)
        top.set(title=model, xlabel="training time (s)", ylabel="test accuracy (%)")
        bottom.set(xlabel="training images processed", ylabel="test accuracy (%)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
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


def plot_accuracy_epochs(curves: pd.DataFrame, title: str) -> Figure:
    """Test accuracy over epochs: mean over seeds, band of ± one std."""
    models = list(dict.fromkeys(curves["model_key"]))
    fig, axes = _panels(len(models))
    for ax, model in zip(axes[0], models, strict=True):
        c = curves[curves["model_key"] == model]
        for method, setting in _series(c):
            s = c[(c["method_label"] == method) & (c["setting"] == setting)]
            _mean_band(ax, s, "test_acc", series_label(method, setting), _colour(method), scale=100.0)
        ax.set(title=model, xlabel="epoch", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


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


def plot_landscapes(entries: Sequence[tuple[str, str, dict | None, dict | None]], title: str) -> Figure:
    """One row per method: its 1D curve (left) and 2D contour map (right), 2D maps on shared levels.

    `entries`: (label, method, 1D result or None, 2D result or None).
    """
    has_1d = any(e[2] is not None for e in entries)
    has_2d = any(e[3] is not None for e in entries)
    ncols = int(has_1d) + int(has_2d)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * len(entries)), layout="constrained")
    axes = fig.subplots(len(entries), ncols, squeeze=False)
    surfaces = [np.asarray(e[3]["loss"], dtype=float) for e in entries if e[3] is not None]
    finite = np.concatenate([s[np.isfinite(s)].ravel() for s in surfaces]) if surfaces else np.array([])
    flat = not finite.size or finite.max() <= finite.min()
    levels = 25 if flat else np.linspace(finite.min(), finite.max(), 25)
    for row, (label, method, one, two) in enumerate(entries):
        col = 0
        if has_1d:
            ax = axes[row, col]
            col += 1
            if one is not None:
                ax.plot(one["alphas"], one["loss"], color=_colour(method))
                ax.set(xlabel="α (filter-normalised direction)", ylabel="loss")
                ax.grid(alpha=0.3)
            ax.set_title(f"{label}: 1D")
        if has_2d:
            ax = axes[row, col]
            if two is not None:
                gx, gy = np.meshgrid(np.asarray(two["xs"]), np.asarray(two["ys"]))
                filled = ax.contourf(gx, gy, np.asarray(two["loss"], dtype=float), levels=levels,
                                     cmap="viridis", extend="both")
                fig.colorbar(filled, ax=ax, label="loss")
                ax.set(xlabel="x", ylabel="y", aspect="equal")
            ax.set_title(f"{label}: 2D")
    fig.suptitle(title)
    return fig


def plot_interpolation(lines: Sequence[tuple[str, dict]], title: str) -> Figure:
    """Loss and accuracy on the straight line between two final models (α=0: the first, α=1: the second)."""
    has_acc = any(np.isfinite(np.asarray(r.get("accuracy", [np.nan]), dtype=float)).any() for _, r in lines)
    fig, axes = _panels(2 if has_acc else 1)
    for label, r in lines:
        axes[0, 0].plot(r["alphas"], r["loss"], marker="o", ms=3, label=label)
        if has_acc:
            acc = 100 * np.asarray(r["accuracy"], dtype=float)
            axes[0, 1].plot(r["alphas"], acc, marker="o", ms=3, label=label)
    axes[0, 0].set(xlabel="α", ylabel="loss")
    if has_acc:
        axes[0, 1].set(xlabel="α", ylabel="accuracy (%)")
    for ax in axes[0]:
        for a in (0.0, 1.0):
            ax.axvline(a, color="k", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
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


# ---- which figures the data allow ----------------------------------------------------------------
def save_overhead_figure(panels: Sequence[Any], folder: Path) -> FigureFile:
    png, pdf = save_figure(plot_overhead(panels, "Step time per method (× SGD's)"), folder / "overhead_steps")
    return FigureFile("Step time per method, every overhead measurement",
                      "Median step time / SGD's over interleaved rounds (bars: quartiles); black ticks: the "
                      "suite's upper targets on that device; hatched: the official SAF store design.", png, pdf)



def _final_points(rows: pd.DataFrame) -> pd.DataFrame:
    ok = rows[rows["status"] == "finished"].copy()
    if ok.empty or "train_time_s" not in ok.columns:
        return pd.DataFrame()
    done = ok["epochs_completed"] if "epochs_completed" in ok.columns else ok.get("epochs")
    samples = ok["num_samples"] if "num_samples" in ok.columns else np.nan
    ok["images"] = pd.to_numeric(samples, errors="coerce") * pd.to_numeric(done, errors="coerce")
    return ok


def make_figures(rows: pd.DataFrame, cells: pd.DataFrame, folder: Path) -> list[FigureFile]:
    """Every figure the stored data allow, per dataset (and per model for landscapes)."""
    from .landscape import load_landscape

    made: list[FigureFile] = []

    def save(fig: Figure, name: str, title: str, caption: str) -> None:
        png, pdf = save_figure(fig, folder / name)
        made.append(FigureFile(title, caption, png, pdf))

    curves_all = epoch_curves(rows)
    hess_all = hessian_curves(rows)
    land_all = landscape_files(rows)
    for d in dict.fromkeys(rows["dataset"].astype(str)):
        name = dataset_name(d)
        c = cells[cells["dataset"] == d]
        r = rows[rows["dataset"] == d]
        if c["img_s_mean"].notna().any():
            save(plot_throughput(c[c["img_s_mean"].notna()], f"{name}: training throughput"),
                 f"throughput_{slug(d)}", f"{name}: throughput per method",
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
            save(plot_cost(curves, points, f"{name}: accuracy vs training cost"), f"cost_{slug(d)}",
                 f"{name}: accuracy against training cost",
                 "Test accuracy after each epoch (mean over seeds) against cumulative training time and "
                 "training images processed.")
        if len(curves):
            save(plot_accuracy_epochs(curves, f"{name}: test accuracy over epochs"),
                 f"accuracy_epochs_{slug(d)}", f"{name}: test accuracy over epochs",
                 "Mean over seeds; the band is ± one std.")
        hess = hess_all[hess_all["dataset"] == d] if len(hess_all) else hess_all
        if c["lambda_max_mean"].notna().any() or len(hess):
            save(plot_lambda(c, hess, rf"{name}: Hessian $\lambda_{{\max}}$"), f"lambda_max_{slug(d)}",
                 f"{name}: λ_max per method and over epochs",
                 "Largest Hessian eigenvalue of the training loss on fixed samples; mean ± std over seeds.")
        land = land_all[land_all["dataset"] == d] if len(land_all) else land_all
        for model in dict.fromkeys(land.get("model_key", [])):
            lm = land[land["model_key"] == model]
            entries = []
            surfaces = lm[lm["kind"].isin(["1d", "2d"])]
            for method, setting in _series(surfaces):
                s = surfaces[(surfaces["method_label"] == method) & (surfaces["setting"] == setting)]
                seed = s["seed"].min()  # one run per method: the lowest seed with a landscape
                s = s[s["seed"] == seed]
                got = {k: load_landscape(p)[0] for k, p in zip(s["kind"], s["path"], strict=True)}
                entries.append((f"{series_label(method, setting)} (seed {seed})", method, got.get("1d"),
                                got.get("2d")))
            if entries:
                save(plot_landscapes(entries, f"{name} / {model}: loss landscapes"),
                     f"landscape_{slug(d)}_{slug(model)}", f"{name} / {model}: 1D and 2D loss landscapes",
                     "Filter-normalised random directions around each method's final weights; 2D maps share "
                     "one colour scale.")
            lines = lm[lm["kind"] == "line"]
            if len(lines):
                drawn = [(f"{series_label(m, st)} (seed {sd}) → {to or '?'}", load_landscape(p)[0])
                         for m, st, sd, to, p in zip(lines["method_label"], lines["setting"], lines["seed"],
                                                     lines["to_method"], lines["path"], strict=True)]
                save(plot_interpolation(drawn, f"{name} / {model}: interpolation between final models"),
                     f"interpolation_{slug(d)}_{slug(model)}", f"{name} / {model}: interpolation line",
                     "Loss and accuracy at (1 − α)·θ_a + α·θ_b between two final models (e.g. SGD → SAF).")
    return made
