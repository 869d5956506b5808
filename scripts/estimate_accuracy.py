"""Estimate vs actual: price finished grid cells with `--estimate`'s code, set the estimate beside what the runs took.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/estimate_accuracy.py --out results/estimate \
        grids/quick.yaml=/work/est-actual/quick grids/fashionmnist-regime.yaml=results/fashionmnist-regime

Each GRID=RUNS pair: the grid's cells are expanded with RUNS as their output folder, the finished ones are
estimated here (one process, this machine as it is now), and their summary.json (train_time_s, wall_s),
metrics.csv (sharpness_time_s) and hessian.json (seconds) give the actual. Writes
<out>/estimate-accuracy-<device>-<UTC time>.csv with the estimate's provenance in every row (and the
load average before and after, since other jobs share the machine) and the runs' own provenance beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from bench import io
from bench.estimate_cli import estimate_configs
from bench.grid import load_grid
from bench.provenance import command_line, provenance


def actual(run_dir: Path) -> dict | None:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return None
    s = json.loads(summary_path.read_text())
    if s.get("status") != "finished":
        return None
    metrics = pd.read_csv(run_dir / "metrics.csv")
    sharp = float(metrics["sharpness_time_s"].sum()) if "sharpness_time_s" in metrics else 0.0
    hessian = json.loads((run_dir / "hessian.json").read_text())["seconds"] if (run_dir / "hessian.json").is_file() \
        else 0.0
    return {"actual_train_s": s["train_time_s"], "actual_eval_s": s["wall_s"] - s["train_time_s"],
            "actual_sharpness_s": sharp, "actual_hessian_s": hessian,
            "actual_total_s": s["wall_s"] + sharp + hessian, "run_git_commit": s["git_commit"],
            "run_device_name": s["device_name"], "run_command": s["command"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="GRID=RUNS")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()
    started = time.perf_counter()
    for pair in args.pairs:
        grid, runs = pair.split("=", 1)
        cells = [c for c in load_grid(grid).cells(out=runs) if actual(c.run_dir) is not None]
        estimates, notes, device = estimate_configs([c.config for c in cells])
        for cell, est in zip(cells, estimates, strict=True):
            got = actual(cell.run_dir)
            rows.append({"grid": grid, "run_dir": cell.name, "method": cell.config.method, "epochs": cell.config.epochs,
                         "est_train_s": est.train_s, "est_eval_s": est.eval_s, "est_sharpness_s": est.sharpness_s,
                         "est_hessian_s": est.hessian_s, "est_total_s": est.total_s, **got,
                         "ratio_train": est.train_s / got["actual_train_s"],
                         "ratio_total": est.total_s / got["actual_total_s"],
                         "estimate_notes": " | ".join(notes)})
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()
    prov = provenance(device, command_line(sys.argv))
    frame = pd.DataFrame(rows).assign(
        estimate_seconds=seconds, load_avg_1min_before=load_before[0], load_avg_1min_after=load_after[0],
        torch_threads=__import__("torch").get_num_threads(), **{f"estimate_{k}": v for k, v in prov.items()})
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = Path(args.out) / f"estimate-accuracy-{device.type}-{stamp}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_csv(path, frame)
    print(frame[["grid", "run_dir", "est_train_s", "actual_train_s", "ratio_train", "est_total_s", "actual_total_s",
                 "ratio_total"]].to_string(index=False))
    print(f"{path} ({seconds:.0f} s, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
