"""Reading and writing a run directory's records: the one reader and the one writer of each.

Writers are atomic (bench.io): a reader, or a crash, never sees half a file. Readers come in two kinds:
the lenient ones (`read_*`) return None for a missing or unreadable file, for callers that only look
(the report, a cell's state); `strict=True` raises bench.damage.DamagedFile, one line naming the file and
what to do, for callers that would otherwise build on a damaged file (resume, grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pandas as pd

from . import io
from .config import RunConfig
from .damage import DamagedFile, check_metrics, read_json_mapping, read_yaml_mapping
from .records import (
    CONFIG,
    HESSIAN,
    HESSIAN_EPOCHS,
    METRICS,
    SUMMARY,
    SUMMARY_CONFIG_KEYS,
    HessianEpochRow,
    HessianRecord,
    MetricsRow,
    Summary,
)


def _lenient(read: Any, path: Path, strict: bool) -> Any:
    try:
        return read(path)
    except DamagedFile:
        if strict:
            raise
        return None


# --- summary.json
def read_summary(run_dir: Path, *, strict: bool = False) -> Summary | None:
    return cast("Summary | None", _lenient(read_json_mapping, run_dir / SUMMARY, strict))


def write_summary(run_dir: Path, summary: Summary) -> None:
    io.write_json(run_dir / SUMMARY, summary)


def config_summary(config: RunConfig, config_hash: str, run_dir: Path) -> Summary:
    """The part of a summary its config decides: what the run was (the outcome is the caller's to add)."""
    return cast("Summary", {
        "method": config.method, "dataset": config.dataset, "model": config.model, "seed": config.seed,
        "config_hash": config_hash, "run_dir": run_dir.name, "hparams": config.hparams(),
        "method_seed": config.method_seed(), **{k: getattr(config, k) for k in SUMMARY_CONFIG_KEYS}})


# --- config.yaml (the resolved RunConfig as a mapping; bench.config.RunConfig.from_record reads it back)
def read_config(run_dir: Path, *, strict: bool = False) -> dict[str, Any] | None:
    return _lenient(read_yaml_mapping, run_dir / CONFIG, strict)


def write_config(run_dir: Path, values: dict[str, Any]) -> None:
    io.write_yaml(run_dir / CONFIG, values)


# --- metrics.csv
def read_metrics(run_dir: Path, *, strict: bool = False) -> pd.DataFrame | None:
    path = run_dir / METRICS
    try:
        check_metrics(path)
    except DamagedFile:
        if strict:
            raise
        return None
    return pd.read_csv(path) if path.exists() else None


def write_metrics(run_dir: Path, rows: Sequence[MetricsRow]) -> None:
    io.write_csv(run_dir / METRICS, pd.DataFrame(list(rows)))


# --- hessian.json and hessian_epochs.csv
def read_hessian(run_dir: Path) -> HessianRecord | None:
    return cast("HessianRecord | None", _lenient(read_json_mapping, run_dir / HESSIAN, False))


def write_hessian(run_dir: Path, record: HessianRecord) -> None:
    io.write_json(run_dir / HESSIAN, record)


def read_hessian_epochs(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / HESSIAN_EPOCHS
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def write_hessian_epoch(run_dir: Path, row: HessianEpochRow) -> None:
    """Add (or replace) one epoch's row of hessian_epochs.csv, kept in epoch order."""
    stored = read_hessian_epochs(run_dir)
    rows = [r for r in (stored.to_dict("records") if stored is not None else []) if r["epoch"] != row["epoch"]]
    io.write_csv(run_dir / HESSIAN_EPOCHS, pd.DataFrame([*rows, row]).sort_values("epoch"))
