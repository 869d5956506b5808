"""The stored files of safbench: every file name and path pattern, and the schema of each record, defined
here and nowhere else (bench.rundir reads and writes them; bench.damage tells a damaged file).

A run directory (`<out>/<run name>/`) holds what `safbench run` writes (config, metrics, summary,
checkpoints, attempts) and what the flatness commands add beside it (Hessian, landscapes). A results
folder holds run directories plus the rebuilt `results.csv`; `safbench overhead` writes its own CSVs.
Readers and writers import the names from here, so a rename is one edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

# --- a run directory, as `safbench run` writes it
CONFIG = "config.yaml"  # the resolved RunConfig, written before training
METRICS = "metrics.csv"  # one row per epoch
SUMMARY = "summary.json"  # the run's outcome; what results.csv and the report read
CHECKPOINT = "checkpoint.pt"  # rank 0's checkpoint; ranks > 0 keep their shard beside it
ATTEMPTS = "attempts.jsonl"  # one JSON line per start/end of an attempt (grid cells)
FAILED_SUMMARY = "summary.failed-{n}.json"  # a failed attempt's summary, set aside so the cell reruns

# The run-level config keys a summary carries, so that a results row (and the report) reads nothing but the
# summary. Summaries written before a key joined this list get it from config.yaml (bench.results), and a key
# RunConfig gained after the run was made from its default, which that run used.
SUMMARY_CONFIG_KEYS = ("optimizer", "epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov",
                       "label_smoothing", "schedule", "warmup_epochs", "lr_milestones", "lr_gamma", "bn_update",
                       "train_subset", "label_noise", "augment", "val_size", "val_split_seed", "label_noise_seed")

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
# --- a tuned results folder (safbench tune, bench.tune_cli)
TRIALS_DIR = "trials"  # the tuning trials' run directories (reported through tuning.csv, not as runs)
TUNING_DESIGN = "design.json"  # inside TRIALS_DIR: the design the trials were made from
TUNING = "tuning.csv"  # one row per trial and tuning seed: validation numbers and training time
SELECTED = "selected.json"  # per method: the chosen setting, its mean validation accuracy, the rule
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


# --- the records' schemas. JSON files are mappings of these keys; CSV files have these columns.
class MetricsRow(TypedDict, total=False):
    """One epoch of metrics.csv (0-based `epoch`); a method adds its own numbers (Method.extra_metrics)."""

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    val_loss: float  # --val-size: on the held-out training images (bench.data.split)
    val_acc: float
    lr: float
    epoch_time_s: float  # the epoch's training steps, evaluation excluded
    images_per_s: float
    # Under label noise: the training accuracy (clean pass on the batch as trained, before the step) on the
    # samples whose label is correct, and on the flipped ones, against their noisy (trained-on) and true label.
    train_acc_clean: float
    train_acc_flipped_noisy: float
    train_acc_flipped_true: float
    peak_mem_bytes: int
    host_rss_bytes: int
    data_resident_bytes: int
    sharpness: float  # --sharpness: SAM sharpness of the model after the epoch
    sharpness_time_s: float
    adaptive_sharpness: float  # --sharpness: ASAM's adaptive sharpness (bench.sharpness), beside the plain one
    adaptive_sharpness_time_s: float


class Provenance(TypedDict, total=False):
    """Who made a record, with what (bench.provenance): every summary and every measurement made apart from
    its run carries all of these."""

    git_commit: str
    device_name: str
    hostname: str
    command: str
    python_version: str
    torch_version: str
    torchvision_version: str
    timm_version: str
    # A method from an installed plugin (optimizers.method_origin); absent for the built-in methods.
    method_distribution: str
    method_version: str
    method_entry_point: str


class Summary(Provenance, total=False):
    """summary.json: a run's outcome, and everything a results row and the report read of the run."""

    method: str
    dataset: str
    model: str
    seed: int
    config_hash: str
    run_dir: str
    status: str  # finished, diverged or failed
    error: str | None
    epochs: int
    epochs_completed: int  # a failed run counts only the epochs its checkpoint holds
    final_test_acc: float | None
    best_test_acc: float | None
    final_train_loss: float | None
    final_test_loss: float | None
    final_train_acc: float | None
    final_sharpness: float | None
    final_adaptive_sharpness: float | None
    # --val-size: the read-outs chosen on validation data (bench.tuning.val_readout); None without a split
    final_val_acc: float | None
    best_val_acc: float | None
    val_best_epoch: int | None  # 0-based epoch of the highest validation accuracy, ties to the earlier
    test_acc_at_val_best: float | None
    images_per_s: float | None  # median over the epochs after the first
    images_per_s_warmup: float | None  # the first epoch's
    train_time_s: float
    wall_s: float
    peak_mem_bytes: int
    hparams: dict[str, Any]  # the method's hyperparameters
    method_seed: int | None  # the seed of the method's own random draws (ESAM), derived from `seed`
    extras: dict[str, Any]  # the method's own numbers of the last epoch (MetricsRow beyond its fields)
    label_noise_flipped: int
    world_size: int
    precision: str
    num_samples: int
    num_params: int
    # the run-level config (SUMMARY_CONFIG_KEYS)
    optimizer: str
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    label_smoothing: float
    schedule: str
    warmup_epochs: int
    lr_milestones: list[int]
    lr_gamma: float
    bn_update: str
    train_subset: int | None
    label_noise: float
    augment: bool
    val_size: int
    val_split_seed: int
    label_noise_seed: str


class HessianRecord(Provenance, total=False):
    """hessian.json: the top eigenvalues and trace of one model of the run (analysis.measure.hessian), and which.
    Measured by `safbench hessian` rather than during the run, it carries its own Provenance."""

    epoch: int  # the epochs the measured model had trained: equal to the summary's epochs_completed when final
    lambda_max: float
    top_eigenvalues: list[float]
    algorithm: str  # of the top eigenvalues: lanczos or power (analysis.measure.eigen)
    eigen_hvps: int  # Hessian-vector products the top eigenvalues took
    hvps: int  # all Hessian-vector products of the measurement (eigenvalues, trace probes, label views)
    eigen_iterations: list[int]  # power iteration: products per eigenvalue (lanczos: [])
    trace: float | None  # None when no trace was asked for
    trace_stderr: float | None
    samples: int  # the fixed training samples asked for
    n_samples: int  # Hutchinson probes of the trace
    num_batches: int
    num_examples: int  # the training samples measured: equal to `samples` unless the set is smaller
    # under label noise: λ_max of the same images with their true labels, and of the flipped ones alone
    lambda_max_true_labels: float | None
    num_examples_true_labels: int
    lambda_max_flipped: float | None
    num_examples_flipped: int
    num_params: int
    params: list[str] | None
    bn_mode: str
    max_iter: int
    tol: float
    seed: int
    seconds: float


class HessianEpochRow(TypedDict, total=False):
    """One row of hessian_epochs.csv: the Hessian after a chosen epoch (0-based, as in metrics.csv)."""

    epoch: int
    lambda_max: float
    trace: float | None  # the run hook measures the course's λ_max alone (None), the final model's trace
    trace_stderr: float | None
    algorithm: str
    hvps: int
    num_examples: int
    seconds: float
    lambda_max_true_labels: float | None  # under label noise (HessianRecord)
    lambda_max_flipped: float | None
    num_examples_flipped: int
    # eigenvalue_0, eigenvalue_1, ...: the top eigenvalues


def fields_of(schema: type) -> set[str]:
    """The keys a schema (one of the TypedDicts above) defines, its bases' included."""
    return set(schema.__annotations__)
