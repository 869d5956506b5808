"""The report's Tuning section: each tuned folder's trials, the chosen settings, and validation accuracy against
every tuned hyperparameter, read from `tuning.csv` and `selected.json` (bench.tune_cli) alone.

It also names the fresh-seed runs of a tuned folder by the setting they ran: `tuned`, `default`, or
`tuned = default` when the choice was the defaults, so tables and claims keep the two apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from bench.records import SELECTED, TUNING
from bench.tuning import readout_value

from .aggregate import method_rank
from .format import TableFile, slug, write_table
from .plots import colour

TUNED, DEFAULT, BOTH = "tuned", "default", "tuned = default"


@dataclass(frozen=True)
class TunedFolder:
    """One folder made by `safbench tune`: its trials (one row per trial and seed) and its choices."""

    folder: Path
    shown: str  # as the report names it
    trials: pd.DataFrame  # tuning.csv, `setting` parsed into a dict
    selected: dict[str, Any]


def find_tuned(root: Path, shown: Any = str) -> list[TunedFolder]:
    """Every folder under `root` with a selected.json and a tuning.csv."""
    found = []
    for path in sorted(root.rglob(SELECTED)):
        folder = path.parent
        if not (folder / TUNING).exists() or "pilots" in folder.parts:
            continue
        trials = pd.read_csv(folder / TUNING)
        trials["setting"] = [json.loads(s) for s in trials["setting"]]
        found.append(TunedFolder(folder, shown(folder), trials, json.loads(path.read_text())))
    return found


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() <= b.keys() and all(math.isclose(float(b[k]), float(v), rel_tol=1e-9) for k, v in a.items())


def run_settings(rows: pd.DataFrame, tuned: list[TunedFolder]) -> pd.Series:
    """Per row: which of its method's settings a fresh-seed run of a tuned folder ran (None for other rows)."""
    labels = pd.Series(None, index=rows.index, dtype=object)
    by_grid = {t.shown: t for t in tuned}
    for i, row in rows.iterrows():
        t = by_grid.get(str(row.get("grid")))
        if t is None or row["method"] not in t.selected:
            continue
        values = {k: row[k] if k in row.index else None for k in ("lr", "weight_decay")}
        values.update({k.removeprefix("hp_"): row[k] for k in row.index if k.startswith("hp_")})
        chosen = t.selected[row["method"]]["setting"]
        trials = t.trials[t.trials["method"] == row["method"]]
        default = trials[trials["trial"] == 0]["setting"].iloc[0] if len(trials) else None
        is_tuned, is_default = _same(chosen, values), default is not None and _same(default, values)
        labels.at[i] = BOTH if is_tuned and is_default else TUNED if is_tuned else DEFAULT if is_default else None
    return labels


def trial_means(t: TunedFolder) -> pd.DataFrame:
    """One row per method and trial: its setting, seeds, mean validation accuracy (%) at both read-outs."""
    out = []
    for (method, trial), g in t.trials.groupby(["method", "trial"], sort=False):
        choice = t.selected.get(method, {})
        out.append({"method": method, "trial": int(trial), "setting": g["setting"].iloc[0], "n": len(g),
                    "val_final": 100 * np.mean([readout_value(r, "final") for _, r in g.iterrows()]),
                    "val_best": 100 * np.mean([readout_value(r, "val_best") for _, r in g.iterrows()]),
                    "n_not_finished": int((g["status"] != "finished").sum()),
                    "chosen": int(trial) == choice.get("trial")})
    frame = pd.DataFrame(out)
    rank = method_rank(frame["method"])
    return frame.sort_values(["method", "trial"], key=lambda s: s.map(rank) if s.name == "method" else s)


def _setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())


def tuning_tables(t: TunedFolder, out: Path) -> list[TableFile]:
    means = trial_means(t)
    readout = next(iter(t.selected.values()))["readout"] if t.selected else "final"
    shown = pd.DataFrame({
        "method": means["method"], "trial": [f"{n}{' (defaults)' if n == 0 else ''}" for n in means["trial"]],
        "setting": [_setting_text(s) for s in means["setting"]], "seeds": means["n"].astype(str),
        "val acc, final epoch (%)": [f"{v:.2f}" for v in means["val_final"]],
        "val acc, best epoch (%)": [f"{v:.2f}" for v in means["val_best"]],
        "chosen": ["**chosen**" if c else "" for c in means["chosen"]]})
    numbers = means.assign(setting=[json.dumps(s, sort_keys=True) for s in means["setting"]])
    trials_file = write_table(out, f"tuning_trials_{slug(t.shown)}", f"Tuning trials of `{t.shown}`", numbers,
                              shown, notes=[f"Mean over the tuning seeds; a failed or diverged seed counts as 0. "
                                            f"The choice reads the `{readout}` validation accuracy only."])
    rows = []
    for method, choice in t.selected.items():
        mine = means[means["method"] == method]
        if not (mine["trial"] == 0).any():  # selected.json from another design than tuning.csv: nothing to show
            continue
        default = mine[mine["trial"] == 0].iloc[0]
        rows.append({"method": method, "defaults": _setting_text(default["setting"]),
                     "chosen": "(the defaults)" if choice["trial"] == 0 else _setting_text(choice["setting"]),
                     "val acc of the defaults (%)": f"{default['val_final' if readout == 'final' else 'val_best']:.2f}",
                     "val acc of the choice (%)": f"{100 * choice['mean_val_acc']:.2f}",
                     "trials": str(choice["trials"])})
    chosen = pd.DataFrame(rows)
    rule = next(iter(t.selected.values()))["rule"] if t.selected else ""
    chosen_file = write_table(out, f"tuning_chosen_{slug(t.shown)}", f"Chosen settings of `{t.shown}`", chosen,
                              chosen, notes=[f"Rule: {rule}."])
    return [trials_file, chosen_file]


def plot_tuning(t: TunedFolder) -> Figure:
    """Validation accuracy against each tuned hyperparameter: a row of panels per method, a column per key,
    every panel on one y axis and each column on one x axis. Dots: seeds; circles: trial means; star: defaults;
    ring: the choice."""
    means = trial_means(t)
    methods = list(dict.fromkeys(means["method"]))
    keys = list(dict.fromkeys(k for s in means["setting"] for k in s))
    fig = Figure(figsize=(2.6 * len(keys), 2.1 * len(methods)), layout="constrained")
    axes = fig.subplots(len(methods), len(keys), squeeze=False, sharey=True, sharex="col")
    for r, method in enumerate(methods):
        mine, seeds = means[means["method"] == method], t.trials[t.trials["method"] == method]
        for c, key in enumerate(keys):
            ax = axes[r, c]
            if key not in mine["setting"].iloc[0]:
                ax.set_axis_off()
                continue
            x = [s[key] for s in seeds["setting"]]
            ax.scatter(x, [100 * readout_value(row, "final") for _, row in seeds.iterrows()], s=8,
                       color=colour(method), alpha=0.45, linewidths=0)
            xm = [s[key] for s in mine["setting"]]
            ax.scatter(xm, mine["val_final"], s=28, facecolors="none", edgecolors=colour(method))
            default, chosen = mine[mine["trial"] == 0], mine[mine["chosen"]]
            ax.scatter([s[key] for s in default["setting"]], default["val_final"], marker="*", s=90, color="black",
                       zorder=3)
            ax.scatter([s[key] for s in chosen["setting"]], chosen["val_final"], s=150, facecolors="none",
                       edgecolors="black", linewidths=1.4, zorder=3)
            positive = all(isinstance(v, float) and v > 0 for v in xm)
            if positive and key in ("lr", "weight_decay", "rho", "lam", "alpha"):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks ran into each other
            ax.grid(alpha=0.3)
            if r == len(methods) - 1 or r + 1 < len(methods) and key not in means[means["method"] ==
                                                                                  methods[r + 1]]["setting"].iloc[0]:
                ax.set_xlabel(key)
                ax.tick_params(labelbottom=True)
            if c == 0:
                ax.set_ylabel(f"{method}\nval acc (%)")
        if "lr" not in keys:
            axes[r, 0].set_ylabel(f"{method}\nval acc (%)")
    fig.suptitle(f"Validation accuracy (final epoch) of every trial, {t.shown}: dots seeds, circles means, "
                 "star defaults, ring chosen", fontsize=9)
    return fig


# ---- the claims, at both settings and both read-outs -------------------------------------------------
READOUT_COLUMNS = {"final": "final_test_acc", "val_best": "test_acc_at_val_best"}
READOUT_NAMES = {"final": "final epoch", "val_best": "validation-best epoch"}


def claims_side_by_side(rows: pd.DataFrame, steps: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str]]:
    """Every claim of a tuned folder judged four times, by the claims' own rules (analysis.report.claims): at the
    defaults and at the tuned settings, each read at the final epoch and at the epoch of highest validation
    accuracy (test accuracy there; the epoch chosen on validation data). Returns the numbers, one row per claim and
    column pair, and a sentence for every claim whose verdict differs between the four."""
    from . import claims

    finished = rows[rows["status"] == "finished"] if "status" in rows else rows
    frames = {}
    for setting in (DEFAULT, TUNED):
        part = finished[finished["setting"].isin([setting, BOTH])]
        if not {"sgd", "sam"} <= set(part["method"]):
            continue
        for readout, column in READOUT_COLUMNS.items():
            if column not in part or part[column].isna().all():
                continue
            judged = claims.label_cells(part.assign(final_test_acc=pd.to_numeric(part[column], errors="coerce")))
            frames[(setting, readout)] = claims.claims_frame(claims.claims_table(judged, steps=steps))
    if not frames:
        return pd.DataFrame(), []
    keys = list(dict.fromkeys(k for f in frames.values() for k in f["key"]))
    out, changes = [], []
    for key in keys:
        record: dict[str, Any] = {"key": key}
        verdicts = {}
        for (setting, readout), frame in frames.items():
            match = frame[frame["key"] == key]
            if match.empty:
                continue
            r = match.iloc[0]
            record.setdefault("claim", r["claim"])
            record.setdefault("measured", r["measure"])
            record.setdefault("role", r["role"])
            tag = f"{setting}, {READOUT_NAMES[readout]}"
            record[f"{tag}: estimate"] = r["mean"]
            record[f"{tag}: low"], record[f"{tag}: high"], record[f"{tag}: n"] = r["low"], r["high"], r["n"]
            record[f"{tag}: verdict"] = r["verdict"]
            record[f"{tag}: shown"] = claims.shown_estimate(r)
            verdicts[tag] = r["verdict"]
        out.append(record)
        if len(set(verdicts.values())) > 1:
            said = "; ".join(f"{v} at {t}" for t, v in verdicts.items())
            changes.append(f"{record['claim']} ({record['measured']}): {said}.")
    return pd.DataFrame(out), changes


def tuned_claims_table(t: TunedFolder, rows: pd.DataFrame, out: Path, steps: pd.DataFrame | None) -> TableFile | None:
    numbers, changes = claims_side_by_side(rows[rows["grid"].astype(str) == t.shown], steps)
    if numbers.empty:
        return None
    tags = [c.removesuffix(": shown") for c in numbers.columns if c.endswith(": shown")]
    shown = pd.DataFrame({"claim": numbers["claim"], "role": numbers["role"], "measured": numbers["measured"]})
    for tag in tags:
        shown[tag] = [f"{s} {v}" if isinstance(s, str) else "—"
                      for s, v in zip(numbers[f"{tag}: shown"], numbers[f"{tag}: verdict"], strict=True)]
    extra = ("\nWhere a verdict changes with the setting or the read-out:\n\n" + "\n".join(f"- {c}" for c in changes)
             + "\n") if changes else "\nNo verdict changes with the setting or the read-out.\n"
    return write_table(out, f"claims_tuned_{slug(t.shown)}",
                       f"Claims judged on `{t.shown}`: defaults and tuned settings, final and validation-best epochs",
                       numbers.drop(columns=[c for c in numbers.columns if c.endswith(": shown")]), shown,
                       extra_md=extra, notes=["Each column is judged by the rules of the Claims section on the runs "
                                              "of that setting (fresh seeds; `tuned = default` runs count in both); "
                                              "the validation-best read-out takes each run's test accuracy at its "
                                              "epoch of highest validation accuracy."])
