"""analysis.report's modules import one way along the report's chain: load -> aggregate -> tables / figures /
cost / claims -> build, with format below all of them. tests/test_imports.py checks, on the same graph (every
import, function-local ones included), that no package has a cycle; this checks the order inside the report.
"""

from __future__ import annotations

from tests.test_imports import GRAPH

# A module may import only modules of a lower rank.
REPORT_RANKS = {"format": 0, "load": 1, "run_files": 1, "stats": 1, "aggregate": 2,
                "tables": 3, "cost": 3, "overhead": 3, "claims": 3, "overhead_tables": 4, "overhead_history": 4,
                "plots": 4,
                "landscape_plots": 5, "tuning": 5, "figures": 6, "fit_plots": 7, "build": 8, "__init__": 9}
RANKS = {("analysis.report" if m == "__init__" else f"analysis.report.{m}"): r for m, r in REPORT_RANKS.items()}


def test_every_report_module_has_its_place_in_the_chain() -> None:
    report = {n for n in GRAPH if n == "analysis.report" or n.startswith("analysis.report.")}
    assert report == set(RANKS), f"place every module of analysis.report in REPORT_RANKS: {report ^ set(RANKS)}"


def test_report_modules_import_only_earlier_ones() -> None:
    late = [f"{a} imports {b}" for a in sorted(RANKS) for b in sorted(GRAPH[a] & set(RANKS)) if RANKS[b] >= RANKS[a]]
    assert not late, "; ".join(late)


def test_the_report_reads_runs_through_bench_readers_only() -> None:
    """Rows through bench.results, a run's other files through bench.rundir; it never runs or trains."""
    used = {b for a in RANKS for b in GRAPH[a] if b.startswith("bench.")}
    assert {"bench.results", "bench.rundir"} <= used and not used & {"bench.run", "bench.loop", "bench.cells"}

