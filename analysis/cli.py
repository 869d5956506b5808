"""`safbench` subcommands of the analysis package: `report` (tables, figures, REPORT.md from stored results).

`register` is what bench.cli calls; each subcommand is added by its own `_add_<name>` function so
more can join without touching the others.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    report = build_report(args.results, args.out, args.reference, figures=not args.no_figures,
                          overhead=args.overhead)
    for damage in report.damaged:
        print(f"safbench: warning: {damage}; left out of the report", file=sys.stderr)
    history = args.history or Path(args.results) / "overhead" / "history.csv"
    if args.history or Path(history).is_file():  # the suite's own speed across commits, per device
        from .report.overhead_history import history_figures, load_history

        for path in history_figures(load_history(history), Path(args.out or args.results) / "figures"):
            print(f"{path}: step time and ratio to SGD across commits ({history})")
    left_out = f", {len(report.damaged)} damaged runs left out" if report.damaged else ""
    print(f"{report.report}: {len(report.rows)} runs, {len(report.tables)} tables, "
          f"{len(report.figures)} figures{left_out}")
    return 0


def _add_report(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="regenerate tables, figures and REPORT.md from stored results",
        description="Rebuild the paper's tables (ours beside the published numbers), a table per dataset, "
                    "figures (PNG and PDF) and REPORT.md from stored run directories / results.csv files "
                    "only.")
    p.add_argument("--results", default="results",
                   help="folder walked for run directories and results.csv files (default: results)")
    p.add_argument("--out", default=None,
                   help="where REPORT.md, tables/ and figures/ go (default: --results)")
    p.add_argument("--reference", default=None,
                   help="published numbers (default: results/reference/paper_results.csv of this checkout)")
    p.add_argument("--overhead", default=None,
                   help="folder of `safbench overhead` CSVs for the cost section (default: RESULTS/overhead "
                        "when it exists)")
    p.add_argument("--no-figures", action="store_true", help="tables and REPORT.md only")
    p.add_argument("--history", default=None, metavar="FILE",
                   help="history CSV of `safbench overhead --history`: step time and ratio to SGD per method "
                        "across commits, one figure per device (default: RESULTS/overhead/history.csv when "
                        "it exists)")
    p.set_defaults(func=_report)


def register(subparsers: Any) -> None:
    _add_report(subparsers)
