"""`safbench report` on folders a new user would give it: one method only, damaged run directories."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.report.aggregate import throughput_share
from analysis.report.format import MISSING
from bench.cli import main
from tests.analysis.conftest import curve, write_run


@pytest.fixture(scope="module")
def saf_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder holding one SAF run (written directly, as `safbench run` leaves it) and no SGD run."""
    out = tmp_path_factory.mktemp("saf-only") / "r1"
    write_run(out, curve(np.random.default_rng(0), 1), method="saf", dataset="synthetic", epochs=1, batch_size=32,
              train_subset=64)
    return out


def test_throughput_share_without_any_base_run_is_missing() -> None:
    cells = pd.DataFrame({"method": ["saf", "sam"], "dataset": ["c10"] * 2, "model": ["r18"] * 2,
                          "epochs": [1, 1], "img_s_mean": [50.0, 60.0]})
    assert all(math.isnan(s) for s in throughput_share(cells))
    # a base run of another workload only: no ratio either (and no KeyError on the empty selection)
    cells = pd.concat([cells, pd.DataFrame({"method": ["sgd"], "dataset": ["c100"], "model": ["r18"],
                                            "epochs": [1], "img_s_mean": [100.0]})], ignore_index=True)
    assert [math.isnan(s) for s in throughput_share(cells)] == [True, True, False]


def test_report_on_a_folder_with_no_sgd_run(saf_only: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main(["report", "--results", str(saf_only), "--out", str(out), "--no-figures"]) == 0
    table = [line for line in (out / "tables" / "dataset_synthetic.md").read_text().splitlines()
             if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    saf = [c.strip() for c in table[2].strip("|").split("|")]
    assert saf[header.index("Method")] == "saf"
    assert saf[header.index("Share of base")] == MISSING
    assert (out / "REPORT.md").is_file()


DAMAGE = {"summary.json": "[]", "config.yaml": "method: [saf\n  epochs: {{\n", "metrics.csv": "\x00\x01\n\"x"}


def test_report_lists_damaged_runs_and_goes_on(saf_only: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    shutil.copytree(saf_only, results)
    (good,) = [p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
    damaged = {}
    for name, text in DAMAGE.items():
        copy = results / f"{good.name}-{name.split('.')[0]}"
        shutil.copytree(good, copy)
        (copy / name).write_text(text)
        damaged[name] = copy / name
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["report", "--results", str(results), "--out", str(out), "--no-figures"]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == len(DAMAGE)  # one line per damaged file, naming it and what to do
    for path in damaged.values():
        assert any(str(path) in w and "delete it" in w for w in warnings), (path, warnings)
    assert "1 runs" in captured.out and "3 damaged runs left out" in captured.out
    runs = pd.read_csv(out / "tables" / "runs.csv")
    assert runs["run_dir"].tolist() == [good.name]  # no row for a damaged run, none of Nones
    text = (out / "REPORT.md").read_text()
    assert "## Damaged runs (left out)" in text and all(str(p) in text for p in damaged.values())
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before


def test_report_of_only_damaged_runs_is_one_line_exit_2(saf_only: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    shutil.copytree(saf_only, results)
    (run_dir,) = [p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
    (run_dir / "summary.json").write_text("{\"status\": \"fini")
    capsys.readouterr()
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(run_dir / "summary.json") in err and "delete it" in err
