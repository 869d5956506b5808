"""The stored files of safbench: every file name and path pattern, defined here and nowhere else.

A run directory (`<out>/<run name>/`) holds what `safbench run` writes (config, metrics, summary,
checkpoints, attempts) and what the flatness commands add beside it (Hessian, landscapes). A results
folder holds run directories plus the rebuilt `results.csv`; `safbench overhead` writes its own CSVs.
Readers and writers import the names from here, so a rename is one edit.
"""

from __future__ import annotations

from pathlib import Path

# --- a run directory, as `safbench run` writes it
CONFIG = "config.yaml"  # the resolved RunConfig, written before training
METRICS = "metrics.csv"  # one row per epoch
SUMMARY = "summary.json"  # the run's outcome; what results.csv and the report read
CHECKPOINT = "checkpoint.pt"  # rank 0's checkpoint; ranks > 0 keep their shard beside it
ATTEMPTS = "attempts.jsonl"  # one JSON line per start/end of an attempt (grid cells)
FAILED_SUMMARY = "summary.failed-{n}.json"  # a failed attempt's summary, set aside so the cell reruns

# The run-level config keys a summary carries, so that a results row (and the report) reads nothing but the
# summary. Summaries written before a key joined this list get it from config.yaml (bench.results), and keys
# added to RunConfig later still (LEGACY_DEFAULTS) from the default every older run used.
SUMMARY_CONFIG_KEYS = ("optimizer", "epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov",
                       "label_smoothing", "schedule", "warmup_epochs", "lr_milestones", "lr_gamma", "bn_update",
                       "train_subset", "label_noise", "augment")
LEGACY_DEFAULTS = {"label_noise": 0.0, "augment": True}

# --- beside it, from the flatness commands (analysis.flatness)
HESSIAN = "hessian.json"  # λ_max and trace of the final model
HESSIAN_EPOCHS = "hessian_epochs.csv"  # λ_max at chosen epochs
HESSIAN_DENSITY = "hessian_density.npz"  # stochastic-Lanczos eigenvalue density
LANDSCAPE_1D = "landscape_1d.npz"
LANDSCAPE_2D = "landscape_2d.npz"
LANDSCAPE_LINE = "landscape_line_{other}.npz"  # the loss on the line to another run's weights
LANDSCAPE_GLOB = "landscape_*.npz"
LANDSCAPE_LINE_GLOB = "landscape_line_*.npz"

# --- a results folder
RESULTS = "results.csv"  # one flat row per run directory (bench.results), rebuilt, never edited
GRID_DIR = ".grid"  # a grid's bookkeeping: locks, cell configs
RESULTS_LOCK = "results.lock"  # inside GRID_DIR: serialises rebuilds of results.csv
REPORT = "REPORT.md"
NOTES = "NOTES.md"  # hand-written conclusions kept beside a results folder's runs, quoted by the report
TABLES_DIR = "tables"
FIGURES_DIR = "figures"

# --- safbench overhead: one CSV per benchmark kind and measurement
OVERHEAD_CSV = "{kind}-{device}-{stamp}.csv"  # kind: steps, loop or store


def shard_name(rank: int, epoch: int) -> str:
    """The file of rank `rank`'s share of the checkpoint after `epoch` epochs (ranks > 0 only)."""
    return f"checkpoint-rank{rank}-e{epoch}.pt"


def shard_glob(rank: int) -> str:
    return f"checkpoint-rank{rank}-*.pt"


def failed_summary(run_dir: Path, n: int) -> Path:
    return run_dir / FAILED_SUMMARY.format(n=n)


def landscape_line(run_dir: Path, other: str | Path) -> Path:
    return run_dir / LANDSCAPE_LINE.format(other=Path(other).name)


def overhead_csv(folder: Path, kind: str, device: str, stamp: str) -> Path:
    return folder / OVERHEAD_CSV.format(kind=kind, device=device, stamp=stamp)


def overhead_glob(kind: str) -> str:
    return f"{kind}-*.csv"
