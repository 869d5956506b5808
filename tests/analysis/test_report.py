"""`safbench report` on a results folder of stored records written directly (tests/analysis/conftest.py).

The numbers in the tables are checked against pandas aggregates recomputed here straight from the
run directories' summary.json / hessian.json files (not through the report's loader), and the
paper's numbers against edits of a copy of the reference CSV. One test trains a tiny run and measures
it with the real commands: the seam between the writers and the report's reader.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.measure.landscape import load_landscape
from analysis.report import Report, build_report
from analysis.report.aggregate import aggregate, throughput_share
from analysis.report.format import MISSING, fmt_diff, fmt_pm, render_latex, render_markdown
from analysis.report.load import REFERENCE_CSV, load_reference
from analysis.report.plots import plot_lambda
from analysis.report.tables import dataset_table, format_dataset_table
from bench.cli import main
from bench.config import RunConfig
from bench.records import NOTES
from bench.results import write_results
from bench.run import run
from tests.analysis.conftest import StoredResults, curve, write_run

TINY = {"model": "mlp_tiny", "batch_size": 32, "train_subset": 64, "device": "cpu", "num_workers": 0,
        "progress": False}


@dataclass
class Built:
    results: Path
    out: Path
    report: Report
    commands: list[str]


@pytest.fixture(scope="module")
def built(stored_results: StoredResults, tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("report") / "report"
    return Built(stored_results.results, out, build_report(stored_results.results, out), stored_results.commands)


# ---- independent recomputation ------------------------------------------------------------------
def _summaries(folder: Path) -> pd.DataFrame:
    """One row per run straight from its files: summary.json, config.yaml's epochs, hessian.json."""
    recs = []
    for path in sorted(folder.rglob("summary.json")):
        s = json.loads(path.read_text())
        rec = {k: s[k] for k in ("method", "dataset", "model", "seed", "epochs", "final_test_acc",
                                 "best_test_acc", "images_per_s", "train_time_s", "command", "status")}
        h = path.parent / "hessian.json"
        if h.exists():
            hj = json.loads(h.read_text())
            rec.update(lambda_max=hj["lambda_max"], trace=hj["trace"])
        recs.append(rec)
    return pd.DataFrame(recs)


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]


def _md_rows(path: Path) -> list[dict[str, str]]:
    """The first pipe table of a markdown file as dicts (header -> cell)."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) != len(header):
            break  # the next table (outside reference) starts
        table.append(dict(zip(header, cells, strict=True)))
    return table


def _close(shown: str, value: float, digits: int) -> None:
    got = _numbers(shown)
    assert got, f"no number in {shown!r}"
    assert got[0] == pytest.approx(value, abs=0.51 * 10 ** -digits), (shown, value)


# ---- files and links ----------------------------------------------------------------------------
TABLES = ("paper_table_3", "dataset_synthetic", "dataset_cifar10", "dataset_fashionmnist",
          "time_to_target_synthetic", "time_to_target_cifar10", "time_to_target_fashionmnist")
# A second folder of a dataset (synthetic-short) gets figures of its own: folders can hold different regimes.
FIGURES = ("throughput_synthetic", "cost_synthetic", "throughput_cifar10", "cost_cifar10", "throughput_fashionmnist",
           "cost_fashionmnist", "throughput_synthetic_synthetic_short", "cost_synthetic_synthetic_short")
FLATNESS_FIGURES = ("lambda_max_synthetic", "landscape_1d_synthetic_mlp_tiny", "landscape_2d_synthetic_mlp_tiny",
                    "landscape_3d_synthetic_mlp_tiny", "hessian_density_synthetic_mlp_tiny")


def test_report_writes_every_table_and_figure(built: Built) -> None:
    for stem in TABLES:
        for ext in ("md", "tex", "csv"):
            path = built.out / "tables" / f"{stem}.{ext}"
            assert path.stat().st_size > 0, path
    assert (built.out / "tables" / "cells.csv").stat().st_size > 0
    figures = FIGURES + FLATNESS_FIGURES
    for stem in figures:
        png, pdf = built.out / "figures" / f"{stem}.png", built.out / "figures" / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert pdf.read_bytes()[:5] == b"%PDF-", pdf
        assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    assert not list(built.out.rglob(".*.tmp")), "a temporary file was left behind"


def test_flatness_figures_come_from_the_run_files(built: Built) -> None:
    made = {f.png.stem for f in built.report.figures}
    assert set(FLATNESS_FIGURES) <= made
    # No Hessian or landscape was measured on CIFAR-10: no such figure is invented for it.
    assert not {f for f in made if "cifar10" in f and f.startswith(("lambda", "landscape", "hessian"))}
    # The density figure quotes the extremes read off it, one row per method with a density.
    text = built.report.report.read_text()
    section = text.split("Hessian eigenvalue density", 1)[1]
    assert "| Method | Seeds | Largest eigenvalue | Most negative eigenvalue | Mass below 0 (%) |" in section
    assert all(re.search(rf"^\| {m}( \[[^]]*\])? \| 0 \|", section, re.M) for m in ("sgd", "sam", "saf"))


def test_report_md_links_every_file_and_lists_commands(built: Built) -> None:
    text = built.report.report.read_text()
    links = set(re.findall(r"\]\(([^)]+)\)", text))
    for target in links:
        assert (built.out / target).is_file(), target
    generated = {p.relative_to(built.out).as_posix() for p in (built.out / "tables").iterdir()}
    generated |= {p.relative_to(built.out).as_posix() for p in (built.out / "figures").iterdir()}
    assert generated <= links, generated - links
    for command in built.commands:
        assert command in text
    assert text.count(built.commands[0]) == 1  # deduplicated
    rows = _summaries(built.results)
    assert len(rows) == len(built.commands)
    first = json.loads(next(built.results.rglob("summary.json")).read_text())
    for key in ("git_commit", "torch_version", "device_name"):
        assert first[key] in text
    assert "safbench report --results" in text  # how to regenerate


# ---- numbers ------------------------------------------------------------------------------------
def test_dataset_table_equals_pandas_aggregates(built: Built) -> None:
    runs = _summaries(built.results)
    runs = runs[runs["dataset"] == "synthetic"]
    g = runs.groupby(["method", "epochs"])
    acc = g["final_test_acc"].agg(["mean", "std"]) * 100
    speed = g["images_per_s"].agg(["mean", "std"])
    # Each cell's base: the SGD cell of the same config.
    base = speed.loc["sgd", "mean"]
    csv = pd.read_csv(built.out / "tables" / "dataset_synthetic.csv", keep_default_na=False, na_values=[""])
    md = _md_rows(built.out / "tables" / "dataset_synthetic.md")
    assert len(csv) == len(md) == len(acc) == 4
    for (_, c), m in zip(csv.iterrows(), md, strict=True):
        epochs = int(re.search(r"epochs=(\d+)", c["setting"]).group(1))
        key = (c["method"], epochs)
        assert c["n"] == g.size()[key]
        assert c["acc_mean"] == pytest.approx(acc.loc[key, "mean"], rel=1e-12)
        assert c["img_s_mean"] == pytest.approx(speed.loc[key, "mean"], rel=1e-12)
        assert c["share"] == pytest.approx(speed.loc[key, "mean"] / base[epochs], rel=1e-12)
        _close(m["Test acc (%)"], acc.loc[key, "mean"], 2)
        _close(m["Share of base"], speed.loc[key, "mean"] / base[epochs], 3)
        _close(m["Images/s"], speed.loc[key, "mean"], 0)
        if g.size()[key] > 1:
            assert c["acc_std"] == pytest.approx(acc.loc[key, "std"], rel=1e-12)
            shown_std = _numbers(m["Test acc (%)"].split("±")[1])[0]
            assert shown_std == pytest.approx(acc.loc[key, "std"], abs=0.0051)
        else:
            assert "±" not in m["Test acc (%)"] and math.isnan(c["acc_std"])
    order = [m["Method"] for m in md]
    assert order.index("sgd") < order.index("sam") < order.index("saf")


def test_cells_of_different_grids_stay_apart(built: Built) -> None:
    md = _md_rows(built.out / "tables" / "dataset_synthetic.md")
    settings = sorted((m["Method"], m["Setting"]) for m in md)
    assert settings == [("saf", "epochs=2"), ("sam", "epochs=2"), ("sgd", "epochs=1"), ("sgd", "epochs=2")]
    seeds = {(m["Method"], m["Setting"]): m["Seeds"] for m in md}
    assert seeds[("sgd", "epochs=1")] == "1" and seeds[("sgd", "epochs=2")] == "2"


def test_hessian_columns_equal_pandas_aggregates(built: Built) -> None:
    runs = _summaries(built.results)
    runs = runs[runs["lambda_max"].notna()]
    stats = runs.groupby("method")[["lambda_max", "trace"]].agg(["mean", "std"])
    csv = pd.read_csv(built.out / "tables" / "dataset_synthetic.csv")
    md = {(m["Method"], m["Setting"]): m for m in _md_rows(built.out / "tables" / "dataset_synthetic.md")}
    for method in ("sgd", "sam", "saf"):
        c = csv[(csv["method"] == method) & (csv["setting"] == "epochs=2")].iloc[0]
        for name, column in (("lambda_max", "λ_max"), ("trace", "Hessian trace")):
            assert c[f"{name}_mean"] == pytest.approx(stats.loc[method, (name, "mean")], rel=1e-12)
            assert c[f"{name}_std"] == pytest.approx(stats.loc[method, (name, "std")], rel=1e-12)
            shown = _numbers(md[(method, "epochs=2")][column])
            # Shown to 4 significant digits.
            assert shown[0] == pytest.approx(stats.loc[method, (name, "mean")], rel=1e-3)
    assert md[("sgd", "epochs=1")]["λ_max"] == MISSING  # that run measured none


def test_paper_table_shows_only_rows_with_runs_of_ours(built: Built) -> None:
    md = _md_rows(built.out / "tables" / "paper_table_3.md")
    # Ours on CIFAR-10 (mlp_tiny): our numbers, the paper's missing, CIFAR-100 entirely missing.
    assert sorted((m["Model"], m["Method"]) for m in md) == [("mlp_tiny", "saf"), ("mlp_tiny", "sgd")]
    by_key = {(m["Model"], m["Method"]): m for m in md}
    runs = _summaries(built.results)
    ours = runs[runs["dataset"] == "cifar10"].set_index("method")
    for method in ("sgd", "saf"):
        row = by_key[("mlp_tiny", method)]
        _close(row["CIFAR-10 acc (%)"], 100 * ours.loc[method, "final_test_acc"], 2)
        assert row["CIFAR-10 paper acc (%)"] == row["CIFAR-10 Δ acc"] == MISSING
        assert all(v == MISSING for k, v in row.items() if k.startswith("CIFAR-100"))
    # The csv keeps every (model, method) of the paper with the paper's numbers and none of ours.
    csv = pd.read_csv(built.out / "tables" / "paper_table_3.csv", keep_default_na=False, na_values=[""])
    csv_keys = {(r["model"], r["method"]): r for _, r in csv.iterrows()}
    ref = load_reference()
    paper = ref[(ref["table"] == "Table 3") & ref["source"].str.startswith("SAF")]
    for _, p in paper.iterrows():
        row = csv_keys[(p["model"], p["method"])]
        assert row[f"{p['dataset']}_paper_acc"] == pytest.approx(p["top1_acc"])
        assert row[f"{p['dataset']}_n"] == 0 and math.isnan(row[f"{p['dataset']}_acc_mean"])
    # No ImageNet run: Table 1 is not written, and the report says so in its one-line pointer.
    assert not (built.out / "tables" / "paper_table_1.md").exists()
    text = built.report.report.read_text()
    pointer = text.split("## Against the paper's tables", 1)[1].split("\n\n")[1]
    assert "Table 1 (ImageNet)" in pointer and "results/reference/paper_results.csv" in pointer


def test_outside_reference_rows_sit_beside_the_dataset_table(built: Built) -> None:
    text = (built.out / "tables" / "dataset_fashionmnist.md").read_text()
    ref = load_reference()
    sam = ref[(ref["dataset"] == "fashionmnist")]
    assert len(sam) >= 2
    for _, r in sam.iterrows():
        assert r["source"] in text and f"{r['top1_acc']:.2f}" in text and r["method"] in text


def test_paper_numbers_come_from_the_reference_csv(built: Built, tmp_path: Path) -> None:
    ref = pd.read_csv(REFERENCE_CSV)
    edited = tmp_path / "paper_results.csv"
    row = (ref["table"] == "Table 3") & (ref["dataset"] == "cifar10") & (ref["model"] == "resnet18") \
        & (ref["method"] == "sgd")
    assert row.sum() == 1
    ref.loc[row, "top1_acc"] = 12.34
    extra = pd.DataFrame([
        {"source": "SAF (edited in a test)", "table": "Table 3", "dataset": "cifar10", "model": "mlp_tiny",
         "method": "sgd", "top1_acc": 50.0, "top1_std": 1.0, "images_per_s": 1000, "throughput_vs_base": 1.0,
         "notes": "a row added by the test"},
        {"source": "Elsewhere (test)", "table": "Fig. 9", "dataset": "synthetic", "model": "mlp_tiny",
         "method": "sam", "top1_acc": 33.0, "top1_std": float("nan"), "images_per_s": float("nan"),
         "throughput_vs_base": float("nan"), "notes": ""}])
    pd.concat([ref, extra]).to_csv(edited, index=False)
    out = tmp_path / "report"
    build_report(built.results, out, edited, figures=False)
    md = {(m["Model"], m["Method"]): m for m in _md_rows(out / "tables" / "paper_table_3.md")}
    edited_csv = pd.read_csv(out / "tables" / "paper_table_3.csv")
    assert edited_csv.query("model == 'resnet18' and method == 'sgd'")["cifar10_paper_acc"].tolist() == [12.34]
    runs = _summaries(built.results)
    ours = runs.query("dataset == 'cifar10' and method == 'sgd'")["final_test_acc"].iloc[0]
    assert md[("mlp_tiny", "sgd")]["CIFAR-10 paper acc (%)"] == "50.00 ± 1.00"
    _close(md[("mlp_tiny", "sgd")]["CIFAR-10 Δ acc"], 100 * ours - 50.0, 2)
    assert "a row added by the test" in (out / "tables" / "paper_table_3.md").read_text()
    csv = pd.read_csv(out / "tables" / "paper_table_3.csv")
    mine = csv[(csv["model"] == "mlp_tiny") & (csv["method"] == "sgd")].iloc[0]
    assert mine["cifar10_acc_diff"] == pytest.approx(100 * ours - 50.0, rel=1e-12)
    # An outside reference row of the same model and method is joined into the dataset table.
    syn = pd.read_csv(out / "tables" / "dataset_synthetic.csv")
    assert syn.loc[syn["method"] == "sam", "ref_acc"].tolist() == [33.0]
    # The untouched report still shows the published value.
    original = pd.read_csv(built.out / "tables" / "paper_table_3.csv")
    assert original.query("model == 'resnet18' and method == 'sgd'")["cifar10_paper_acc"].tolist() == [95.61]


# ---- pure functions -----------------------------------------------------------------------------
def test_diverged_and_failed_runs_are_counted_not_averaged(built: Built) -> None:
    rows = built.report.rows.copy()
    cell = (rows["dataset"] == "synthetic") & (rows["method"] == "sam")
    victim = rows[cell].index[0]
    rows.loc[victim, "status"] = "diverged"
    agg = aggregate(rows)
    sam = agg[(agg["dataset"] == "synthetic") & (agg["method"] == "sam")].iloc[0]
    kept = rows[cell & (rows["status"] == "finished")]
    assert (sam["n"], sam["n_diverged"]) == (1, 1)
    assert sam["acc_mean"] == pytest.approx(100 * kept["final_test_acc"].mean())
    shown = format_dataset_table(dataset_table(agg, load_reference(), "synthetic"))
    assert "1 (+1 diverged)" in shown["Seeds"].tolist()


def test_throughput_share_uses_the_base_of_the_same_workload() -> None:
    cells = pd.DataFrame({
        "method": ["sgd", "sgd", "sam", "sam", "saf"],
        "dataset": ["c10"] * 5, "model": ["r18"] * 5,
        "device_name": ["A", "A", "A", "A", "B"],
        "epochs": [1, 2, 2, 3, 2],
        "img_s_mean": [100.0, 200.0, 100.0, 75.0, 50.0]})
    shares = throughput_share(cells).tolist()
    assert shares[:4] == [1.0, 1.0, 0.5, 75.0 / 150.0]  # same config first, else every base cell of it
    assert math.isnan(shares[4])  # no base measured on device B: no ratio across hardware


def test_text_rendering() -> None:
    assert fmt_pm(1.234, 0.5) == "1.23 ± 0.50" and fmt_pm(1.0, float("nan")) == "1.00"
    assert fmt_pm(float("nan"), 1.0) == MISSING and fmt_diff(-0.5) == "-0.50"
    table = pd.DataFrame({"Model": ["a_b|c"], "Acc (%)": ["1.00 ± 0.10"]})
    assert render_markdown(table).splitlines()[2] == r"| a_b\|c | 1.00 ± 0.10 |"
    tex = render_latex(table, "caption", "tab:x")
    assert r"a\_b|c & 1.00 $\pm$ 0.10 \\" in tex and r"Acc (\%)" in tex and tex.count("tabular") == 2


# ---- command line -------------------------------------------------------------------------------
def test_cli_report(built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["report", "--results", str(built.results), "--out", str(out), "--no-figures"]) == 0
    assert (out / "REPORT.md").is_file() and (out / "tables" / "paper_table_3.md").is_file()
    regenerate = f"safbench report --results {built.results} --out {out} --no-figures"
    assert regenerate in (out / "REPORT.md").read_text()
    # ... and the claims of the folder that ran both sgd and sam
    assert "8 tables, 0 figures" in capsys.readouterr().out
    assert list((out / "tables").glob("claims_*.md")) and "## Claims" in (out / "REPORT.md").read_text()


@pytest.mark.parametrize("case", ["missing", "empty", "bad_reference"])
def test_cli_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path, built: Built,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = {"missing": ["--results", str(tmp_path / "nope")],
            "empty": ["--results", str(tmp_path)],
            "bad_reference": ["--results", str(built.results),
                              "--reference", str(tmp_path / "none.csv")]}[case]
    assert main(["report", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("safbench: error:") and "\n" not in err
    assert not (tmp_path / "out" / "REPORT.md").exists()


def test_default_out_is_the_results_folder(built: Built, tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(built.results / "cifar10", results / "cifar10")
    report = build_report(results, figures=False)
    assert report.report == results / "REPORT.md"
    # A second pass reads the same runs: its own tables and figures are not taken for results.
    again = build_report(results, figures=False)
    assert len(again.rows) == len(report.rows) == 2


def test_notes_are_quoted_as_conclusions(built: Built, tmp_path: Path) -> None:
    assert "## Conclusions" not in built.report.report.read_text()  # no NOTES.md, no section
    notes = built.results / "synthetic" / NOTES
    notes.write_text("SAF matched SAM's accuracy on this grid.\n")
    try:
        text = build_report(built.results, tmp_path / "r", figures=False).report.read_text()
    finally:
        notes.unlink()
    assert "### From `synthetic`" in text and "SAF matched SAM's accuracy on this grid." in text
    assert text.index("## What was measured") < text.index("## Conclusions") < text.index("## Cost")


def test_flatness_commands_are_recorded_and_reported(tmp_path: Path) -> None:
    """End to end: a trained run, measured by the real `safbench hessian` and `landscape`, read by the report."""
    results = tmp_path / "results"
    run(RunConfig.from_dict({**TINY, "method": "sgd", "dataset": "synthetic", "epochs": 1,
                             "out": str(results / "g")}), command="safbench run ...")
    (run_dir,) = (p for p in (results / "g").iterdir() if not p.name.startswith("."))  # .grid: the run's lock
    # The records the other tests write by hand have the fields of this real one (or the fixture has drifted).
    written = write_run(tmp_path / "written", curve(np.random.default_rng(0), 1), method="sgd", dataset="synthetic")
    assert set(written.summary) == set(json.loads((run_dir / "summary.json").read_text()))
    write_results(results / "g")  # as a grid leaves it: without the Hessian, until `safbench hessian`
    assert "lambda_max" not in pd.read_csv(results / "g" / "results.csv").columns
    hessian = ["hessian", str(run_dir), "--samples", "16", "--trace-samples", "2", "--device", "cpu"]
    landscape = ["landscape", str(run_dir), "--samples", "16", "--resolution", "5", "--device", "cpu"]
    assert main(hessian) == 0 and main(landscape) == 0
    measured = json.loads((run_dir / "hessian.json").read_text())
    assert measured["command"] == "safbench " + " ".join(hessian)
    assert measured["git_commit"] and measured["device_name"].startswith("cpu") and measured["torch_version"]
    assert pd.read_csv(results / "g" / "results.csv")["lambda_max"].tolist() == [measured["lambda_max"]]
    meta = load_landscape(run_dir / "landscape_1d.npz")[1]
    assert meta["command"] == "safbench " + " ".join(landscape) and meta["git_commit"] == measured["git_commit"]
    text = build_report(results, tmp_path / "r", figures=False).report.read_text()
    flat = text.split("Commands that measured flatness", 1)[1]
    assert meta["command"] in flat and measured["command"] in flat


def test_lambda_figure_draws_a_curve_only_when_there_is_one() -> None:
    cells = pd.DataFrame({"lambda_max_mean": [3.0, 2.0], "lambda_max_std": [0.5, math.nan],
                          "method_label": ["sgd", "saf"], "model_key": ["m", "m"], "setting": ["", ""]})
    final_only = pd.DataFrame({"epoch": [11, 11], "lambda_max": [3.0, 2.0], "model_key": ["m", "m"],
                               "method_label": ["sgd", "saf"], "setting": ["", ""]})
    assert len(plot_lambda(cells, final_only, "t").axes) == 1
    two_epochs = pd.concat([final_only, final_only.assign(epoch=0, lambda_max=[1.0, 1.5])], ignore_index=True)
    fig = plot_lambda(cells, two_epochs, "t")
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "over training"


def test_report_reads_top_down(built: Built) -> None:
    text = built.report.report.read_text()
    sections = ["## What was measured", "## Cost", "## Flatness", "## Against the paper's tables",
                "## How to regenerate", "## Provenance"]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    # First the runs of this folder: one overview line per results folder, dataset and model.
    overview = text.split("## What was measured", 1)[1].split("###", 1)[0]
    lines = [ln for ln in overview.splitlines() if ln.startswith("| report") or ln.startswith("| results")]
    assert {ln.split(" | ")[0].removeprefix("| ") for ln in lines} == {
        "results/synthetic", "results/synthetic-short", "results/cifar10", "results/fashionmnist"}
    synthetic = next(ln for ln in lines if ln.startswith("| results/synthetic |"))
    assert "| sgd, sam, saf | 0 1 | 2 | 6 |" in synthetic
    # The dataset tables come before the cost section, the time-to-target table inside it.
    assert text.index("### Synthetic: every method") < text.index("## Cost") < \
        text.index("### Synthetic: training time until the base's final accuracy")


def test_a_flatness_cell_on_fewer_seeds_than_its_row_says_its_n() -> None:
    from analysis.report.format import BEST_ACC
    from analysis.report.tables import format_dataset_table

    table = pd.DataFrame([{"model": "m", "method": meth, "setting": "", "n": 5, "n_diverged": 0, "n_failed": 0,
                           "acc_mean": 80.0, "acc_std": 1.0, "best_acc_mean": 81.0, "best_acc_std": 1.0,
                           "img_s_mean": 100.0, "img_s_std": 1.0, "share": 1.0, "train_time_s_mean": 1.0,
                           "train_time_s_std": 0.1, "lambda_max_mean": 36.36, "lambda_max_std": math.nan,
                           "lambda_max_n": k, "trace_mean": 500.0, "trace_std": 5.0, "trace_n": 5,
                           "ref_acc": math.nan, "ref_acc_std": math.nan, "acc_diff_ref": math.nan}
                          for meth, k in (("sgd", 1), ("sam", 0))])
    shown = format_dataset_table(table)
    assert shown["λ_max"].tolist() == ["36.36 (n=1)", "36.36"]  # n = 0: nothing measured, nothing to say
    assert not shown["Hessian trace"].str.contains("n=").any()  # the same 5 seeds as the accuracy
    assert BEST_ACC in shown.columns and "Best acc (%)" not in shown.columns
