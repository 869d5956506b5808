"""What top-k Hessian eigenvalues cost by power iteration and by Lanczos, at equal accuracy, on a run's model.

    python -m analysis.eigen_cost RUN_DIR [RUN_DIR ...] --samples 256 --out results/hessian-cost

For each run's last checkpoint, on its fixed measurement images (analysis.flatness), a tightly converged
reference (Lanczos, 6 eigenvalues, residuals 1e-5, 40 vectors) is computed first; then each algorithm runs
over a sweep of tolerances for top-1 and top-3, the two algorithms interleaved, and every trial's
Hessian-vector products, seconds (operator built, first gradient pass included) and largest relative error
of its k eigenvalues against the reference are written to trials.csv, with provenance. table.md then gives,
per model and k, the cheapest trial of each algorithm that reached ``--accuracy`` (relative) on all k
eigenvalues, and the trial at each algorithm's default tolerance.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench import io
from bench.provenance import provenance

from .flatness import load_run
from .measure.hessian import top_eigenvalues

POWER_TOLS = (1e-2, 1e-3, 1e-4)
LANCZOS_TOLS = (1e-2, 1e-3)
DEFAULT_TOL = 1e-3  # hessian_summary's, for both algorithms


def trial(model: Any, batches: list, reference: list[float], *, k: int, algorithm: str, tol: float,
          ncv: int | None, max_iter: int) -> dict[str, Any]:
    start = time.perf_counter()
    eig = top_eigenvalues(model, batches, k=k, tol=tol, max_iter=max_iter, algorithm=algorithm, ncv=ncv)
    seconds = time.perf_counter() - start
    found = sorted(eig.eigenvalues, reverse=True)
    errors = [abs(v - r) / abs(r) for v, r in zip(found, reference[:k], strict=True)]
    return {"k": k, "algorithm": algorithm, "tol": tol, "ncv": ncv, "max_iter": max_iter, "hvps": eig.hvps,
            "seconds": seconds, "max_rel_error": max(errors),
            "eigenvalues": " ".join(f"{v:.6g}" for v in eig.eigenvalues)}


def measure_run(run_dir: Path, samples: int, ncvs: list[int | None], ks: list[int], power_tols: list[float],
                lanczos_tols: list[float], with_reference: bool = True) -> list[dict[str, Any]]:
    """Trials of one run's model; without the reference (another process's part) errors are left to --merge."""
    config, model, batches = load_run(run_dir, torch.device("cpu"), samples)
    reference, ref_hvps = [float("nan")] * 6, 0
    if with_reference:
        # Residuals of 1e-5 of each Ritz value: near the float32 products' own noise, and an eigenvalue error
        # far below it (of the order of the squared residual over the gap).
        ref = top_eigenvalues(model, batches, k=6, tol=1e-5, ncv=40, max_iter=300)
        reference, ref_hvps = ref.eigenvalues, ref.hvps
        print(f"{run_dir.name}: reference {[round(v, 4) for v in reference]} ({ref.hvps} products)", flush=True)
    plans = [("power", tol, None, 1000) for tol in power_tols]
    plans += [("lanczos", tol, ncv, 1000) for tol in lanczos_tols for ncv in ncvs]
    # Interleaved (power, lanczos, power, ...) so that a change in the machine's load hits both alike.
    power, lanczos = [p for p in plans if p[0] == "power"], [p for p in plans if p[0] == "lanczos"]
    order = [p for pair in zip(power, lanczos, strict=False) for p in pair]
    order += power[len(lanczos):] + lanczos[len(power):]
    rows = []
    if with_reference and not ks:  # the reference alone, as its own part
        rows.append({"k": 0, "algorithm": "reference", "tol": 1e-5, "ncv": 40, "max_iter": 300, "hvps": ref_hvps,
                     "seconds": float("nan"), "max_rel_error": 0.0,
                     "eigenvalues": " ".join(f"{v:.8g}" for v in reference),
                     "run_dir": run_dir.name, "model": config.model, "method": config.method,
                     "epoch": model.checkpoint_epoch, "samples": sum(len(t) for _, t in batches),
                     "reference": " ".join(f"{v:.8g}" for v in reference[:3]), "reference_hvps": ref_hvps})
    for k in ks:
        for algorithm, tol, ncv, max_iter in order:
            row = trial(model, batches, reference, k=k, algorithm=algorithm, tol=tol, ncv=ncv, max_iter=max_iter)
            row.update(run_dir=run_dir.name, model=config.model, method=config.method, epoch=model.checkpoint_epoch,
                       samples=sum(len(t) for _, t in batches), num_params=sum(p.numel() for p in model.parameters()),
                       reference=" ".join(f"{v:.8g}" for v in reference[:3]), reference_hvps=ref_hvps)
            print(f"  k={k} {algorithm:8s} tol={tol:g} ncv={ncv}: {row['hvps']} products, "
                  f"{row['seconds']:.1f} s, error {row['max_rel_error']:.2e}", flush=True)
            rows.append(row)
    return rows


def with_errors(trials: pd.DataFrame) -> pd.DataFrame:
    """Each trial's error against its model's reference, from whichever part computed it."""
    refs = trials[trials["reference"].notna() & ~trials["reference"].astype(str).str.contains("nan")]
    reference = {m: [float(v) for v in r.split()] for m, r in zip(refs["run_dir"], refs["reference"], strict=True)}
    missing = sorted(set(trials["run_dir"]) - reference.keys())
    if missing:
        raise SystemExit(f"no part holds the reference of {', '.join(missing)}")

    def error(row: pd.Series) -> float:
        found = sorted((float(v) for v in str(row["eigenvalues"]).split()), reverse=True)[:int(row["k"])]
        ref = reference[row["run_dir"]]
        return max((abs(v - r) / abs(r) for v, r in zip(found, ref, strict=False)), default=0.0)

    trials = trials[trials["algorithm"] != "reference"].copy()
    trials["reference"] = trials["run_dir"].map(lambda d: " ".join(f"{v:.8g}" for v in reference[d]))
    trials["max_rel_error"] = trials.apply(error, axis=1)
    return trials


def table(trials: pd.DataFrame, accuracy: float) -> str:
    lines = [f"| model | k | algorithm | cheapest setting reaching {accuracy:g} | HVPs | seconds | error "
             "| at the default tol: HVPs | seconds | error |", "|" + " --- |" * 10]
    for (model, k), group in trials.groupby(["model", "k"], sort=False):
        for algorithm in ("power", "lanczos"):
            g = group[group["algorithm"] == algorithm]
            ok = g[g["max_rel_error"] <= accuracy].sort_values(["hvps", "seconds"])
            d = g[(g["tol"] == DEFAULT_TOL) & (g["ncv"].isna() | (g["ncv"] == g["ncv"].min()))].head(1)
            best = (f"tol {ok.iloc[0]['tol']:g}" + ("" if pd.isna(ok.iloc[0]["ncv"]) else
                                                     f", ncv {int(ok.iloc[0]['ncv'])}"),
                    f"{int(ok.iloc[0]['hvps'])}", f"{ok.iloc[0]['seconds']:.1f}",
                    f"{ok.iloc[0]['max_rel_error']:.1e}") if len(ok) else ("none reached it", "—", "—", "—")
            dflt = (f"{int(d.iloc[0]['hvps'])}", f"{d.iloc[0]['seconds']:.1f}",
                    f"{d.iloc[0]['max_rel_error']:.1e}") if len(d) else ("—", "—", "—")
            lines.append(f"| {model} | {k} | {algorithm} | " + " | ".join((*best, *dflt)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.eigen_cost", description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="*", type=Path)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--k", type=int, nargs="*", default=[1, 3], help="none: the reference alone")
    parser.add_argument("--no-reference", action="store_true", help="a part whose errors --merge computes")
    parser.add_argument("--power-tols", type=float, nargs="*", default=list(POWER_TOLS))
    parser.add_argument("--lanczos-tols", type=float, nargs="*", default=list(LANCZOS_TOLS))
    parser.add_argument("--ncv", type=int, nargs="*", default=[], help="Lanczos vector counts beyond the default")
    parser.add_argument("--accuracy", type=float, default=1e-3)
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="instead of measuring: join these folders' trials.csv (parts run as parallel "
                             "processes) into --out's trials.csv and table.md")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "analysis.eigen_cost", *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        trials = with_errors(pd.concat([pd.read_csv(d / "trials.csv") for d in args.merge], ignore_index=True))
        trials = trials.sort_values(["model", "k", "algorithm", "tol"], kind="stable")
        commits = ", ".join(sorted(set(trials["git_commit"].astype(str))))
        device = trials["device_name"].iloc[0]
        text = (f"# Top-k Hessian eigenvalues: power iteration vs Lanczos at equal accuracy\n\n"
                f"Measured by the commands in trials.csv (`command`; parts run as parallel processes), joined by "
                f"`{command}`, at commit {commits} on {device} (torch {trials['torch_version'].iloc[0]}).\n\n"
                + table(trials, args.accuracy))
        io.write_csv(args.out / "trials.csv", trials)
        io.write_text(args.out / "table.md", text)
        print(text)
        return 0
    stamp = provenance(torch.device("cpu"), command)  # at the start: the commit of the code that runs
    rows = [r for d in args.run_dirs for r in measure_run(d, args.samples, [None, *args.ncv], args.k,
                                                          args.power_tols, args.lanczos_tols,
                                                          not args.no_reference)]
    trials = pd.DataFrame([{**r, **stamp, "torch_threads": torch.get_num_threads()} for r in rows])
    io.write_csv(args.out / "trials.csv", trials)
    print(trials.drop(columns=list(stamp)).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
