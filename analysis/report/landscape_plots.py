"""The loss-landscape charts: 1D curves and interpolation lines, 2D contours and 3D surfaces on one shared scale.

Inputs are the arrays analysis.measure.landscape stores (`alphas`/`xs`/`ys`, `loss`, `accuracy`); every map of a
figure shares one set of log-spaced levels (`landscape_levels`), so what a reader compares has one scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .plots import colour

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
        ax.plot(r["alphas"], r["loss"], color=colour(method), label=label, lw=1.6)
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
        ax.set_title(label, color=colour(method), fontsize=10)
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
        ax.set_title(label, color=colour(method), fontsize=10)
        ax.set(xlabel="dir. 1", ylabel="dir. 2")
        ax.set_zlabel("loss (log)")
        ax.view_init(elev=30, azim=-60)
    fig.suptitle(title)
    return fig
