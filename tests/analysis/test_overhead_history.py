"""`safbench report --history`: the suite's speed across commits, one figure per device, from history rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.report.overhead_history import history_figures
from tests.analysis.conftest import StoredResults
from tests.cli_util import run_main


def history(path: Path) -> Path:
    rows = []
    for i, commit in enumerate(("a" * 40, "b" * 40, "c" * 40)):
        for device in ("cpu: Xeon (2 cores, 1 threads)", "NVIDIA H100"):
            for method, ms, ratio in (("sgd", 40.0, 1.0), ("saf", 41.0 + i, 1.02 + i / 50)):
                rows.append({"measured_at": f"2026120{i}T000000Z", "commit": commit, "tree": "dirty" if i == 2 else
                             "clean", "device_name": device, "threads": 1, "torch_version": "2.14.1",
                             "model": "cnn_small", "method": method, "step_ms": ms, "ratio_to_sgd": ratio,
                             "ratio_low": ratio - 0.01, "ratio_high": ratio + 0.01, "interval": "ci95"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_one_figure_per_device(tmp_path: Path) -> None:
    paths = history_figures(pd.read_csv(history(tmp_path / "h.csv")), tmp_path / "fig")
    assert sorted(p.name for p in paths) == ["overhead-history-cpu-xeon-2-cores-1-threads-t1-cnn-small.png",
                                             "overhead-history-nvidia-h100-t1-cnn-small.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_report_draws_the_history_and_refuses_a_foreign_file(tmp_path: Path, stored_results: StoredResults) -> None:
    out = tmp_path / "report"
    result = run_main("report", "--results", str(stored_results.results), "--out", str(out), "--no-figures",
                      "--history", str(history(tmp_path / "h.csv")))
    assert result.returncode == 0, result.stderr
    assert len(list((out / "figures").glob("overhead-history-*.png"))) == 2
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    bad = run_main("report", "--results", str(stored_results.results), "--out", str(out), "--no-figures",
                   "--history", str(tmp_path / "other.csv"))
    assert bad.returncode == 2 and "is not a safbench overhead history: no column 'measured_at'" in bad.stderr
