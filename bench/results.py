"""results.csv: one flat row per run directory, rebuilt from the run directories, never edited.

A row is the run's summary.json with nested fields flattened: `hparams` become `hp_<name>`,
method extras (saf_store_bytes, ...) keep their own names, and hessian.json adds `lambda_max`
and `hessian_trace` (plus its stderr, the top eigenvalues, the sample count and the command and
commit that measured them) when the run measured them, and only when its `epoch` is the run's
`epochs_completed`: a measurement of an earlier model is never shown as the final one's. Lists are written
as JSON text. The run-level config keys (bench.records.SUMMARY_CONFIG_KEYS) come from the summary, or, for a
summary written before it carried them, from the run's config.yaml: the one place that reads an old run's
config for a row. Since rows come from the summaries each time, a crash can cost at most a stale
file, and the next rebuild repairs it.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pandas as pd

import optimizers

from . import io
from .config import RunConfig
from .damage import DamagedFile, damaged_files
from .records import GRID_DIR, RESULTS, RESULTS_LOCK, SUMMARY, SUMMARY_CONFIG_KEYS, Summary
from .rundir import read_config, read_hessian, read_summary

RUN_DEFAULTS = {f.name: f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
                for f in fields(RunConfig) if f.name in SUMMARY_CONFIG_KEYS}
# Columns first in every table (the rest follow in the summaries' order).
LEADING = ("run_dir", "config_hash", "status", "method", "dataset", "model", "seed")
_HESSIAN_FIELDS = {"lambda_max": "lambda_max", "trace": "hessian_trace", "hessian_trace": "hessian_trace",
                   "trace_stderr": "hessian_trace_stderr", "top_eigenvalues": "hessian_top_eigenvalues",
                   "samples": "hessian_samples", "command": "hessian_command", "git_commit": "hessian_git_commit",
                   "lambda_max_true_labels": "lambda_max_true_labels", "lambda_max_flipped": "lambda_max_flipped",
                   "algorithm": "hessian_algorithm", "hvps": "hessian_hvps"}


def result_row(run_dir: Path) -> dict[str, Any] | None:
    """The flat row of one run directory, or None if it has no readable summary yet."""
    summary = read_summary(run_dir)
    if summary is None:
        return None
    row: dict[str, Any] = {}
    for key, value in summary.items():
        if key == "hparams" and isinstance(value, dict):
            row.update({f"hp_{k}": v for k, v in value.items()})
        elif key == "extras" and isinstance(value, dict):
            row.update(value)
        elif isinstance(value, dict):
            row.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            row[key] = json.dumps(value) if isinstance(value, list) else value
    hparams = summary.get("hparams")
    if isinstance(hparams, dict) and summary.get("method") in optimizers.methods():
        for hp in optimizers.method_spec(summary["method"]).hparams:
            if hp.added_later and hp.name not in hparams:  # made before the key existed: it ran as the default
                row[f"hp_{hp.name}"] = hp.default
    row["run_dir"] = run_dir.name
    hessian = read_hessian(run_dir) or {}
    if hessian.get("epoch") != summary.get("epochs_completed"):
        hessian = {}  # measured another model than the run's last (e.g. before a resume trained on)
    for src, dst in _HESSIAN_FIELDS.items():
        if src in hessian:
            row[dst] = json.dumps(hessian[src]) if isinstance(hessian[src], list) else hessian[src]
    row.update(_legacy_config(run_dir, summary))
    return row


def _legacy_config(run_dir: Path, summary: Summary) -> dict[str, Any]:
    """The config keys a summary written before it carried them lacks, from the run's config.yaml, in name order.

    A key RunConfig gained after the run was made is not in its config.yaml: the run used its default."""
    missing = [k for k in SUMMARY_CONFIG_KEYS if k not in summary]
    if not missing:
        return {}
    config = read_config(run_dir)
    if config is None:
        return {}
    config = {**RUN_DEFAULTS, **config}  # a key its config.yaml lacks came later: the run used its default
    return {k: json.dumps(config[k]) if isinstance(config[k], list) else config[k] for k in sorted(missing)}


def collect_results(folder: str | Path, damaged: list[DamagedFile] | None = None,
                    check: tuple[str, ...] = ()) -> pd.DataFrame:
    """Every run directory directly under `folder` with a summary, one row each, sorted by name.

    A run whose summary.json (or a file named in `check`) exists but cannot be read has no row;
    its damage is appended to `damaged` so that the caller can say so.
    """
    folder = Path(folder)
    run_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.is_dir() else []
    rows = []
    for run_dir in run_dirs:
        damage = damaged_files(run_dir, (SUMMARY, *check))
        if damage:
            if damaged is not None:
                damaged.extend(damage)
            continue
        row = result_row(run_dir)
        if row is not None:
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(LEADING))
    leading = [c for c in LEADING if c in frame.columns]
    return frame[leading + [c for c in frame.columns if c not in leading]]


def write_results(folder: str | Path) -> Path:
    """Rebuild <folder>/results.csv atomically.

    Serialised by a lock so that, with several grid processes, a rebuild that started before
    another cell's summary appeared cannot land after that cell's own rebuild and hide it.
    """
    folder = Path(folder)
    lock_file = folder / GRID_DIR / RESULTS_LOCK
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = folder / RESULTS
        io.write_csv(path, collect_results(folder))
        return path
    finally:
        os.close(fd)
