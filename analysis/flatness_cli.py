"""`safbench hessian RUN_DIR` and `safbench landscape RUN_DIR`: flatness of a finished run's model."""

from __future__ import annotations

import argparse
from typing import Any

ALGORITHMS = ("lanczos", "power")  # analysis.measure.eigen's, default first; not imported: --help stays fast

ALLOW_UNFINISHED = ("measure a run that has not finished (the file records its epoch; the report attaches it "
                    "to the run only while the run stays at that epoch)")


def _hessian(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.errors import UsageError
    from bench.records import RESULTS
    from bench.results import write_results

    from .flatness import density_for_run_dir, hessian_for_run_dir
    from .measure.landscape import load_landscape

    if args.samples < 1 or args.k < 1 or args.trace_samples < 0:
        raise UsageError(f"--samples {args.samples} / --k {args.k} / --trace-samples {args.trace_samples} are "
                         "invalid: --samples and --k must be >= 1, --trace-samples >= 0")
    if args.density and (args.density_iter < 1 or args.density_runs < 1):
        raise UsageError(f"--density-iter {args.density_iter} / --density-runs {args.density_runs} are invalid: "
                         "both must be >= 1")
    for run_dir in args.run_dirs:
        s = hessian_for_run_dir(run_dir, samples=args.samples, k=args.k, trace_samples=args.trace_samples,
                                bn_mode=args.bn_mode, device=args.device, algorithm=args.algorithm,
                                command=args.invocation, allow_unfinished=args.allow_unfinished)
        top = [round(v, 4) for v in s["top_eigenvalues"]]
        trace = ("no trace" if s["trace"] is None
                 else f"trace {s['trace']:.4g} ± {s['trace_stderr'] or float('nan'):.2g}")
        print(f"{run_dir}: lambda_max {s['lambda_max']:.4g}, top-{args.k} {top}, {trace} "
              f"({s['algorithm']}, {s['hvps']} Hessian-vector products, {s['num_examples']} images, "
              f"{s['seconds']:.0f} s)")
        if args.density:
            path = density_for_run_dir(run_dir, samples=args.samples, n_iter=args.density_iter,
                                       n_v=args.density_runs, bn_mode=args.bn_mode, device=args.device,
                                       command=args.invocation)
            m = load_landscape(path)[1]
            print(f"{run_dir}: density from {m['n_v']} x {m['n_iter']} Lanczos steps: largest {m['largest']:.4g}, "
                  f"most negative {m['smallest']:.4g}, mass below 0 {m['negative_mass']:.3g} "
                  f"({m['seconds']:.0f} s) -> {path.name}")
    # A grid's results.csv carries λ_max and the trace: rebuild the ones these runs belong to.
    for folder in dict.fromkeys(Path(d).resolve().parent for d in args.run_dirs):
        if (folder / RESULTS).exists():
            write_results(folder)
    return 0


def _landscape(args: argparse.Namespace) -> int:
    from .flatness import landscape_for_run_dir

    for run_dir in args.run_dirs:
        path = landscape_for_run_dir(run_dir, dim=args.dim, samples=args.samples, resolution=args.resolution,
                                     span=args.range, seed=args.seed, line_to=args.line_to,
                                     recalibrate_bn=args.recalibrate_bn, device=args.device,
                                     command=args.invocation, allow_unfinished=args.allow_unfinished)
        print(f"wrote {path}")
    return 0


def register(subparsers: Any) -> None:
    h = subparsers.add_parser("hessian", help="top Hessian eigenvalues and trace of a run's final model")
    h.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    h.add_argument("--samples", type=int, default=1000, help="fixed training samples (same for every run)")
    h.add_argument("--k", type=int, default=3, help="number of top eigenvalues")
    h.add_argument("--trace-samples", type=int, default=50, help="Hutchinson probe vectors (0: no trace)")
    h.add_argument("--algorithm", choices=ALGORITHMS, default=ALGORITHMS[0],
                   help="top-k eigenvalues by Lanczos (scipy eigsh; fewer Hessian-vector products, see "
                        "results/hessian-cost) or power iteration with deflation")
    h.add_argument("--bn-mode", choices=("eval", "train"), default="eval")
    h.add_argument("--device", default="auto")
    h.add_argument("--density", action="store_true",
                   help="also store the stochastic-Lanczos eigenvalue density (hessian_density.npz)")
    h.add_argument("--density-iter", type=int, default=100, help="Lanczos steps per density run")
    h.add_argument("--density-runs", type=int, default=1, help="random start vectors (n_v) of the density")
    h.add_argument("--allow-unfinished", action="store_true", help=ALLOW_UNFINISHED)
    h.set_defaults(func=_hessian)

    p = subparsers.add_parser("landscape", help="1D/2D filter-normalised loss landscape of a run's final model")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--dim", type=int, choices=(1, 2), default=1)
    p.add_argument("--line-to", metavar="RUN_DIR", help="the straight line from this run's model to another's")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--resolution", type=int, default=None, help="points per axis (1d 51, 2d 21, line 31)")
    p.add_argument("--range", type=float, default=1.0, help="alphas in [-range, range]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    p.add_argument("--recalibrate-bn", action="store_true", help="recompute BN statistics at every point")
    p.add_argument("--device", default="auto")
    p.add_argument("--allow-unfinished", action="store_true", help=ALLOW_UNFINISHED)
    p.set_defaults(func=_landscape)
