"""The report's cost section: tables from real `safbench overhead` CSVs, and its verdicts on made-up rows.

The end-to-end test runs the real command on a tiny model and checks the report's numbers against the
CSV it wrote; the unit tests feed rows that sit just inside and just outside each target.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.report import build_report
from analysis.report import overhead as ohr
from analysis.report.format import MISSING
from analysis.report.load import PAPER_SOURCE, load_reference
from analysis.report.overhead_tables import format_share_table
from bench.cli import main
from bench.errors import UsageError
from tests.analysis.conftest import curve, write_run

CPU_NAME = "cpu: Test CPU (2 cores, 1 threads)"
GPU_NAME = "NVIDIA H100 80GB HBM3"


# ---- end to end --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder with one stored run (written directly) and the three CSVs of one real `safbench overhead`
    call."""
    results = tmp_path_factory.mktemp("cost") / "results"
    write_run(results / "tiny", curve(np.random.default_rng(0), 1), method="sgd", dataset="synthetic", epochs=1,
              batch_size=32, train_subset=64)
    rc = main(["overhead", "--device", "cpu", "--models", "mlp_tiny", "--batch-size", "8", "--steps", "1",
               "--repeats", "2", "--warmup", "1", "--num-samples", "64", "--out", str(results / "overhead"),
               "--loop", "--loop-samples", "32", "--store-report", "--store-samples", "200",
               "--store-batch-size", "16"])
    assert rc == 0
    return results


def _md_table(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]


def test_report_has_a_cost_section_from_the_csvs(measured: Path, tmp_path: Path) -> None:
    report = build_report(measured, tmp_path / "out")
    text = report.report.read_text()
    assert "## Cost per step (safbench overhead)" in text
    for stem in ("overhead_steps", "overhead_share", "overhead_memory", "overhead_loop",
                 "overhead_store_size", "overhead_store_exchange", "overhead_store_dtype_error"):
        for suffix in ("md", "tex", "csv"):
            assert (tmp_path / "out" / "tables" / f"{stem}.{suffix}").is_file(), (stem, suffix)
    assert (tmp_path / "out" / "figures" / "overhead_steps.png").stat().st_size > 0
    # The command that measured the cost is listed under Provenance, once.
    (steps_csv,) = (measured / "overhead").glob("steps-*.csv")
    command = pd.read_csv(steps_csv)["command"].iloc[0]
    assert text.count(command) == 1 and text.index(command) > text.index("## Provenance")


def test_step_ratios_shown_are_the_csvs(measured: Path, tmp_path: Path) -> None:
    build_report(measured, tmp_path / "out", figures=False)
    (steps_csv,) = (measured / "overhead").glob("steps-*.csv")
    csv = pd.read_csv(steps_csv).set_index("method")
    (shown,) = _md_table(tmp_path / "out" / "tables" / "overhead_steps.md")
    assert shown["SGD img/s"] == f"{csv.at['sgd', 'images_per_s_median']:.0f}"
    for method in ("sam", "esam", "saf", "saf_official", "mesa"):
        r = csv.loc[method]
        assert shown[f"{method} ×"] == \
            f"{r.time_ratio_median:.2f} [{r.time_ratio_q1:.2f}–{r.time_ratio_q3:.2f}]", method
    assert shown["Device"] == ohr.device_label(csv["device_name"].iloc[0]) and shown["File"] == steps_csv.name
    assert shown["Device"].startswith("cpu, ") and "thread" in shown["Device"]


def test_no_overhead_folder_no_cost_section(measured: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(measured / "tiny", results / "tiny")
    report = build_report(results, tmp_path / "out", figures=False)
    assert "Cost per step" not in report.report.read_text()
    assert not list((tmp_path / "out" / "tables").glob("overhead_*"))


def test_overhead_from_another_folder(measured: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["report", "--results", str(measured / "tiny"), "--out", str(tmp_path / "out"), "--no-figures",
               "--overhead", str(measured / "overhead")])
    assert rc == 0
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert "## Cost per step" in text and f"--overhead {measured / 'overhead'}" in text


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_bad_overhead_folder_is_one_line_and_exit_2(measured: Path, tmp_path: Path, case: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "overhead"
    if case == "corrupt":
        folder.mkdir()
        (folder / "steps-cpu-x.csv").write_bytes(b"\xff\xfe\x00garbage")
    out = tmp_path / "out"
    rc = main(["report", "--results", str(measured), "--out", str(out), "--overhead", str(folder)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(folder) in err
    assert not out.exists()  # refused before anything was written


# ---- verdicts on made-up rows ------------------------------------------------------------------------
def _steps(device_name: str, ratios: dict[str, float], model: str = "m") -> pd.DataFrame:
    rows = []
    for method, ratio in {"sgd": 1.0, **ratios}.items():
        rows.append({"file": f"steps-{model}.csv", "device_name": device_name, "shape": "cifar10",
                     "model": model, "batch_size": 128, "precision": "bf16", "channels_last": True,
                     "method": method, "images_per_s_median": 1000.0 / ratio, "time_ratio_median": ratio,
                     "time_ratio_q1": ratio - 0.01, "time_ratio_q3": ratio + 0.01,
                     "throughput_ratio_median": 1.0 / ratio, "num_samples": 1000, "state_bytes": 10_000,
                     "peak_mem_bytes": None, "saf_store_bytes": None, "saf_store_location": None,
                     "mesa_ema_bytes": None})
    return ohr.with_device(pd.DataFrame(rows))


def test_targets_met_on_a_gpu_are_not_flagged() -> None:
    (row,) = ohr.step_table(_steps(GPU_NAME, {"sam": 2.0, "esam": 1.45, "saf": 1.01, "mesa": 1.2})).to_dict(
        "records")
    assert row["device"] == "cuda" and row["missed"] == ""
    assert row["base_images_per_s"] == 1000.0 and row["saf_share"] == pytest.approx(1 / 1.01)


def test_each_missed_gpu_target_is_named() -> None:
    (row,) = ohr.step_table(_steps(GPU_NAME, {"sam": 2.5, "esam": 1.5, "saf": 1.02, "mesa": 1.21})).to_dict(
        "records")
    missed = row["missed"].split("; ")
    assert [m.split(" ")[0] for m in missed] == ["sam", "esam", "saf", "mesa"]
    assert "saf 1.02×, target saf ≤ 1.01 (cuda)" in missed


def test_cpu_rows_are_judged_by_the_cpu_targets_only() -> None:
    # MESA and ESAM have GPU targets only; SAF's CPU bound is 1.05; SAM's band holds everywhere.
    (row,) = ohr.step_table(_steps(CPU_NAME, {"sam": 1.59, "esam": 1.8, "saf": 1.04, "mesa": 1.5})).to_dict(
        "records")
    assert row["device"] == "cpu" and row["missed"] == "sam 1.59×, target sam in [1.6, 2.4]"
    (row,) = ohr.step_table(_steps(CPU_NAME, {"saf": 1.06})).to_dict("records")
    assert row["missed"].startswith("saf 1.06×")


def test_share_table_sets_the_papers_range_beside_ours() -> None:
    steps = ohr.step_table(pd.concat([_steps(CPU_NAME, {"saf": 1.02, "sam": 2.0}, "a"),
                                      _steps(CPU_NAME, {"saf": 0.99, "sam": 1.9}, "b"),
                                      _steps(GPU_NAME, {"saf": 1.005}, "c")], ignore_index=True))
    reference = load_reference()
    shares = ohr.share_table(steps, reference).set_index("method")
    paper = reference[reference["source"].str.startswith(PAPER_SOURCE) & (reference["method"] == "saf")]
    assert shares.at["saf", "paper_min"] == paper["throughput_vs_base"].min()
    assert shares.at["saf", "paper_max"] == paper["throughput_vs_base"].max()
    assert shares.at["saf", "paper_n"] == len(paper) > 0
    assert shares.at["saf", "cpu_min"] == pytest.approx(1 / 1.02) and shares.at["saf", "cpu_max"] == \
        pytest.approx(1 / 0.99) and shares.at["saf", "cpu_n"] == 2
    assert shares.at["saf", "cuda_n"] == 1 and shares.at["sam", "cuda_n"] == 0
    assert math.isnan(shares.at["sam", "cuda_min"])
    shown = format_share_table(shares.reset_index()).set_index("Method")
    assert shown.at["sam", "Ours, GPU (measurements)"] == MISSING
    assert shown.at["saf", "Ours, GPU (measurements)"] == f"{1 / 1.005:.3f} (1)"


def test_device_labels() -> None:
    assert ohr.device_label(CPU_NAME) == "cpu, 1 thread" and ohr.device_label(GPU_NAME) == GPU_NAME
    assert ohr.device_label("cpu: x86_64 (8 cores, 8 threads)") == "cpu, 8 threads"


def test_store_verdicts() -> None:
    store = pd.DataFrame([
        {"section": "size", "design": "saf", "dtype": "float16", "bytes_per_node": 7.69e9},
        {"section": "size", "design": "saf", "dtype": "float16", "bytes_per_node": 7.71e9},
        {"section": "size", "design": "saf_official", "dtype": "float32", "bytes_per_node": 1.2e11},
        {"section": "dtype_error", "design": "saf", "dtype": "bfloat16", "rel_loss_error": 9.9e-4},
        {"section": "dtype_error", "design": "saf", "dtype": "bfloat16", "rel_loss_error": 1.0e-3},
    ]).assign(device_name=CPU_NAME)
    parts = ohr.store_tables(ohr.with_device(store))
    assert list(parts["size"]["node_target_met"]) == [True, False, None]  # no target for the official
    assert list(parts["dtype_error"]["met"]) == [True, False]


def test_loading_ignores_other_files_and_keeps_the_file_name(tmp_path: Path) -> None:
    _steps(CPU_NAME, {"saf": 1.0}).drop(columns=["file", "device"]).to_csv(tmp_path / "steps-cpu-1.csv",
                                                                           index=False)
    (tmp_path / "notes.csv").write_text("not,an,overhead,file\n")
    found = ohr.load_overhead(tmp_path)
    assert set(found) == {"steps"} and set(found["steps"]["file"]) == {"steps-cpu-1.csv"}
    with pytest.raises(UsageError, match="does not exist"):
        ohr.load_overhead(tmp_path / "nowhere")
    _steps(CPU_NAME, {"saf": 1.0}).drop(columns="time_ratio_q1").to_csv(tmp_path / "steps-cpu-2.csv")
    with pytest.raises(UsageError, match="steps-cpu-2.csv is not a safbench overhead steps CSV: it lacks "
                                         "time_ratio_q1"):
        ohr.load_overhead(tmp_path)
