"""SAM's one-step sharpness against epoch, per method: mean and seed band (the SAF paper's Figure 4b)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.records import METRICS  # noqa: E402

from .plots import FigureFile, save_figure  # noqa: E402


def sharpness_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Long table (cell, seed, epoch, sharpness) from the runs' metrics.csv, for runs that logged it."""
    frames = []
    for row in rows.itertuples():
        path = getattr(row, "run_path", None)
        if not isinstance(path, str):
            continue
        try:
            metrics = pd.read_csv(Path(path) / METRICS)
        except (OSError, ValueError):
            continue
        if "sharpness" in metrics:
            frames.append(metrics[["epoch", "sharpness"]].assign(cell=row.cell, seed=row.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def save_sharpness_figure(rows: pd.DataFrame, grid: str, out_dir: Path, order: list[str]) -> FigureFile | None:
    curves = sharpness_curves(rows)
    if curves.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    cells = [c for c in order if c in set(curves["cell"])] + sorted(set(curves["cell"]) - set(order))
    for i, cell in enumerate(cells):
        stats = curves[curves["cell"] == cell].groupby("epoch")["sharpness"].agg(["mean", "min", "max", "count"])
        style = "--" if "_" in cell else "-"
        ax.plot(stats.index + 1, stats["mean"], style, color=colors[i % len(colors)], marker="o", ms=3,
                label=f"{cell} ({int(stats['count'].max())} seeds)")
        ax.fill_between(stats.index + 1, stats["min"], stats["max"], color=colors[i % len(colors)], alpha=0.15)
    starts = {}
    for method in ("saf", "mesa"):
        part = rows[rows["cell"] == method]
        if len(part) and "hp_e_start" in part:
            start = int(part["hp_e_start"].iloc[0])
            if method == "saf" and "hp_e_tilde" in part:
                start = max(start, int(part["hp_e_tilde"].iloc[0]))
            starts.setdefault(start, []).append(method.upper())
    for start, names in starts.items():
        ax.axvline(start + 1, color="grey", lw=0.8, ls=":")
        ax.text(start + 1.1, ax.get_ylim()[1], f"{' & '.join(names)} on", va="top", fontsize=8, color="grey")
    ax.set_xlabel("epoch (after training it)")
    ax.set_ylabel("L(w + ρ g/‖g‖) − L(w), ρ = 0.05")
    ax.set_yscale("log")
    ax.set_title(f"SAM sharpness per epoch: {Path(grid).name}\n(mean over seeds; band: min to max)", fontsize=10)
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    stem = out_dir / f"sharpness_epochs_{re.sub(r'[^A-Za-z0-9_-]+', '_', Path(grid).name)}"
    png, pdf = save_figure(fig, stem)
    plt.close(fig)
    return FigureFile(f"Sharpness per epoch ({Path(grid).name})",
                      "SAM's one-step sharpness on 1,024 fixed, un-augmented training images after every epoch "
                      "(BatchNorm in eval mode; mean of batch-size chunks). Dashed: equal-compute baselines. "
                      "Dotted lines: the epoch at which SAF's and MESA's trajectory loss switches on.", png, pdf)
