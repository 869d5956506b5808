"""The report: tables, figures and REPORT.md regenerated from a results folder's stored records only.

One way through: load (rows via bench.results, the reference CSV) -> aggregate (labels, cells) ->
tables / cost / overhead / claims / figures -> build (REPORT.md); format is shared by all of them, and
run_files reads the per-run files figures need. No module imports one later in that chain.
"""

from .build import Report, build_report

__all__ = ["Report", "build_report"]
