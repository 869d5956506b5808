"""`safbench tune GRID --out DIR`: every method tuned with the same budget, chosen on validation data, then run
on fresh seeds beside its defaults.

    DIR/trials/<run dirs>   the trials (ordinary resumable, locked grid cells) and design.json
    DIR/tuning.csv          one row per trial and tuning seed: validation numbers and training time only
    DIR/selected.json       per method: the chosen setting, its mean validation accuracy, the rule
    DIR/<run dirs>          each method at its chosen setting and at its defaults, on the fresh seeds

Several `safbench tune` processes may work on one DIR at once (each cell is locked); each waits for the
trials the others hold before choosing, and they choose alike. Exit status as `safbench grid`'s.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import faultpoints, io
from .cell_runner import prepare_retry, run_cells
from .cells import DONE, State, cell_state
from .config import RunConfig
from .errors import UsageError
from .grid import Cell, GridSpec, default_out, load_grid, resolve_grid
from .grid_cli import _report, print_cells
from .records import SELECTED, TRIALS_DIR, TUNING, TUNING_DESIGN
from .rundir import read_summary
from .tuning import TuneSpec, choose, parse_tune, trial_settings

TUNING_COLUMNS = ("method", "trial", "setting", "seed", "status", "final_val_acc", "best_val_acc", "val_best_epoch",
                  "train_time_s", "run_dir")
RULE = ("highest mean validation accuracy over the tuning seeds at the `{readout}` read-out (a failed or diverged "
        "seed counts as 0); ties to the lower mean training time, then the earlier trial; trial 0 is the defaults")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("tune", help="tune every method of a grid file with the same budget (its tune: "
                                           "section), choose on validation data, run the choices on fresh seeds",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="grid YAML file with a tune: section")
    p.add_argument("--out", help="output folder (default: base out, else runs/<file stem>)")
    p.add_argument("--dry-run", action="store_true", help="list the trials and their states; run and write nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="rerun failed trials and runs (their summary.json is kept as summary.failed-<n>.json)")
    p.set_defaults(func=tune_command)


def tune_command(args: argparse.Namespace) -> int:
    spec = load_grid(args.file)
    out = Path(args.out or spec.base.get("out") or default_out(resolve_grid(args.file)))
    return tune(spec, out, dry_run=args.dry_run, command=getattr(args, "invocation", None),
                retry_failed=args.retry_failed)


def tune(spec: GridSpec, out: Path, *, dry_run: bool = False, command: str | None = None,
         poll_s: float = 5.0, retry_failed: bool = False) -> int:
    defaults = default_cells(spec)
    tune_spec = parse_tune(spec.tune, list(defaults), spec.base, where=spec.where)
    _check_one_split(defaults, spec.where)
    trials = trial_cells(tune_spec, defaults, out / TRIALS_DIR)  # every cell validated before anything runs
    if dry_run:
        print_cells(spec.where, str(out / TRIALS_DIR), [c for c, _, _ in trials])
        return 0
    (out / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
    _note_design(tune_spec, out / TRIALS_DIR)
    print(f"tune {spec.where}: {len(trials)} trial runs ({tune_spec.trials} trials x {len(tune_spec.seeds)} seeds "
          f"x {len(defaults)} methods) in {out / TRIALS_DIR}", flush=True)
    if retry_failed:
        prepare_retry([c for c, _, _ in trials])
    run_cells([c for c, _, _ in trials], command=command)
    _wait_for(trials, poll_s)
    faultpoints.reached("tune-trials-done")  # every trial finished; tuning.csv and the choice not yet written
    rows = tuning_rows(trials)
    io.write_csv(out / TUNING, pd.DataFrame(rows, columns=list(TUNING_COLUMNS)))
    selected = select(rows, tune_spec)
    io.write_json(out / SELECTED, selected)
    for method, choice in selected.items():
        print(f"tune: {method}: trial {choice['trial']} {json.dumps(choice['setting'])} "
              f"(mean validation accuracy {choice['mean_val_acc']:.4f})", flush=True)
    final = final_cells(tune_spec, defaults, selected, out)
    print(f"tune: {len(final)} runs on the fresh seeds {list(tune_spec.final_seeds)} in {out}", flush=True)
    if retry_failed:
        prepare_retry(final)
    run_cells(final, command=command)
    return _report([c for c, _, _ in trials] + final)


def default_cells(spec: GridSpec) -> dict[str, Cell]:
    """Each method's cell as the grid gives it (its defaults); a tune grid has one setting per method."""
    found: dict[str, Cell] = {}
    for cell in spec.iter_cells(out="."):
        method = cell.config.method
        if method in found:
            raise UsageError(f"{spec.where}: a tune grid gives each method one setting; {method} has several "
                             "(the seeds come from tune.seeds and tune.final_seeds, not from the grid)")
        found[method] = cell
    if not found:
        raise UsageError(f"{spec.where}: the grid names no method to tune")
    return found


def _check_one_split(defaults: dict[str, Cell], where: str) -> None:
    """Every method validates on the same images: one val_size > 0 and one val_split_seed for all."""
    first = next(iter(defaults.values())).config
    for method, cell in defaults.items():
        c = cell.config
        if c.val_size <= 0 or (c.val_size, c.val_split_seed) != (first.val_size, first.val_split_seed):
            raise UsageError(f"{where}: {method} validates on val_size={c.val_size}, val_split_seed="
                             f"{c.val_split_seed}; every method of a tune grid needs the same split (val_size > 0), "
                             "set in base only")


def _values(cell: Cell) -> dict[str, Any]:
    """The cell's keys as given (run keys and method hyperparameters), without its seed and folder."""
    values = {k: v for k, v in cell.config.to_dict().items() if k not in ("out", "seed", "method_seed")}
    values.update(cell.config.hparams())
    return values


def trial_cells(spec: TuneSpec, defaults: dict[str, Cell], folder: Path) -> list[tuple[Cell, int, dict[str, Any]]]:
    """(cell, trial number, setting) for every method, trial and tuning seed."""
    cells = []
    for method, cell in defaults.items():
        values = _values(cell)
        for trial, setting in enumerate(trial_settings(spec, method, values)):
            for seed in spec.seeds:
                cells.append((_cell({**values, **setting, "seed": seed, "out": str(folder)}, setting,
                                    f"{method} trial {trial}"), trial, setting))
    return cells


def final_cells(spec: TuneSpec, defaults: dict[str, Cell], selected: dict[str, Any], out: Path) -> list[Cell]:
    """Each method at its chosen setting and at its defaults (trial 0), on every fresh seed; one cell when they
    are the same setting."""
    cells: dict[str, Cell] = {}
    for method, cell in defaults.items():
        values = _values(cell)
        for setting in (selected[method]["setting"], trial_settings(spec, method, values)[0]):
            for seed in spec.final_seeds:
                new = _cell({**values, **setting, "seed": seed, "out": str(out)}, setting, method)
                cells.setdefault(new.hash, new)
    return list(cells.values())


def _cell(values: dict[str, Any], setting: dict[str, Any], label: str) -> Cell:
    try:
        config = RunConfig.from_dict(values, where=label)
    except UsageError as exc:
        raise UsageError(f"{label} {json.dumps(setting)}: {exc}") from None
    return Cell(config, {"seed": values["seed"], **setting})


def _note_design(spec: TuneSpec, folder: Path) -> None:
    """Store the design beside the trials; say so when it differs from the last one (its trials then drop out)."""
    path = folder / TUNING_DESIGN
    identity = spec.identity()
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = None
    if earlier is not None and earlier != identity:
        print(f"tune: the design differs from the one in {path}: tuning.csv and the choice use only the trials "
              "of the new design; runs of earlier trials stay on disk, unused", flush=True)
    if earlier != identity:
        io.write_json(path, identity)


def _wait_for(trials: Sequence[tuple[Cell, int, dict[str, Any]]], poll_s: float) -> None:
    """Until no trial is held by another process: a choice is made from finished trials only."""
    told = False
    while held := [c for c, _, _ in trials if cell_state(c.run_dir) is State.RUNNING]:
        if not told:
            print(f"tune: waiting for {len(held)} trial runs held by other processes", flush=True)
            told = True
        time.sleep(poll_s)
    left = [c for c, _, _ in trials if cell_state(c.run_dir) not in DONE and cell_state(c.run_dir) is not State.FAILED]
    if left:
        raise UsageError(f"{len(left)} trial runs are not finished (e.g. {left[0].run_dir}: "
                         f"{cell_state(left[0].run_dir).value}); run safbench tune again to resume them")


def tuning_rows(trials: Sequence[tuple[Cell, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per trial run: validation numbers and cost only (the test set takes no part in tuning)."""
    rows = []
    for cell, trial, setting in trials:
        summary = read_summary(cell.run_dir) or {}
        rows.append({"method": cell.config.method, "trial": trial, "setting": json.dumps(setting, sort_keys=True),
                     "seed": cell.config.seed, "status": summary.get("status", cell_state(cell.run_dir).value),
                     "final_val_acc": summary.get("final_val_acc"), "best_val_acc": summary.get("best_val_acc"),
                     "val_best_epoch": summary.get("val_best_epoch"), "train_time_s": summary.get("train_time_s"),
                     "run_dir": cell.run_dir.name})
    return rows


def select(rows: Sequence[dict[str, Any]], spec: TuneSpec) -> dict[str, Any]:
    """selected.json: per method, the winning trial by `bench.tuning.choose`, with the rule in words."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [{**r, "setting": json.loads(r["setting"])} for r in rows if r["method"] == method]
        out[method] = {**choose(mine, spec.select), "trials": spec.trials,
                       "rule": RULE.format(readout=spec.select)}
    return out
