"""The suite's own speed across commits (asv's view): step time and ratio to SGD per method, one figure per device.

Reads the history CSV that `safbench overhead --check/--against --history FILE` appends to (one row per
method and measurement: commit, clean/dirty tree, device, threads, torch version, step time, ratio to SGD
with its interval). Measurements are placed in the order they were made; a dirty tree's commit is marked
with '*'. Different devices, thread counts or models never share an axis: their times are not comparable.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.errors import UsageError  # noqa: E402

from .overhead import method_rank  # noqa: E402

NEEDED = ("measured_at", "commit", "tree", "device_name", "threads", "model", "method", "step_ms", "ratio_to_sgd")


def load_history(path: str | Path) -> pd.DataFrame:
    """The history rows; UsageError naming the file when it is unreadable or lacks a column."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UsageError(f"history {path} cannot be read ({exc})") from None
    missing = [c for c in NEEDED if c not in frame.columns]
    if missing:
        raise UsageError(f"history {path} is not a safbench overhead history: no column {missing[0]!r}")
    return frame


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def history_figures(history: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One PNG per (device, threads, model): step time (top) and ratio to SGD (bottom) per method."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for (device, threads, model), rows in history.groupby(["device_name", "threads", "model"], sort=True):
        runs = rows.drop_duplicates("measured_at").sort_values("measured_at")
        position = {at: i for i, at in enumerate(runs["measured_at"])}
        labels = [f"{c[:8]}{'*' if t == 'dirty' else ''}" for c, t in zip(runs["commit"], runs["tree"], strict=True)]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(5.0, 0.6 * len(labels) + 3), 5.5), sharex=True)
        for i, method in enumerate(sorted(rows["method"].unique(), key=method_rank)):
            m = rows[rows["method"] == method].sort_values("measured_at")
            x = [position[a] for a in m["measured_at"]]
            color = f"C{i}"  # a method keeps its colour in both panels
            top.plot(x, m["step_ms"], marker="o", label=method, color=color)
            if method == "sgd":
                continue
            low = m["ratio_low"] if "ratio_low" in m else None
            if low is not None and low.notna().all():
                yerr = [m["ratio_to_sgd"] - low, m["ratio_high"] - m["ratio_to_sgd"]]
                bottom.errorbar(x, m["ratio_to_sgd"], yerr=yerr, marker="o", capsize=3, label=method, color=color)
            else:
                bottom.plot(x, m["ratio_to_sgd"], marker="o", label=method, color=color)
        top.set_ylabel("step time (ms, median)")
        top.set_title(f"{device}, {threads} thread(s), {model}", fontsize=9)
        top.legend(fontsize=8)
        bottom.axhline(1.0, color="grey", lw=0.8)
        bottom.set_ylabel("step time / SGD's")
        bottom.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        bottom.set_xlabel("commit (* uncommitted changes), in measurement order")
        fig.tight_layout()
        path = out / f"overhead-history-{_slug(str(device))}-t{threads}-{_slug(str(model))}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
