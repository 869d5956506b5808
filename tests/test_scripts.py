"""The shell scripts README and the issues point to: their safbench commands must parse with today's CLI.

They cannot run here (they install, train for an hour or need a GPU), so a renamed flag would only
show on a user's machine; parsing each call with the real parser catches that in CI.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bench.cli import build_parser

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
_CALL = re.compile(r"(?:\$SB|\S*/safbench|-m bench)\s+(.*)")


def safbench_calls(script: Path) -> list[list[str]]:
    """argv of every safbench call in `script`; shell expansions become the placeholder X."""
    text = script.read_text().replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") or line.startswith("SB="):
            continue
        match = _CALL.search(line)
        if match:
            args = re.sub(r'"\$\(.*?\)"', "X", match.group(1).rstrip().removesuffix("&"))  # "$(echo ...)"
            args = re.sub(r'"?\$\{?\w+\}?"?', "X", args)  # "$RUNS", $OUT, ${VAR}
            calls.append(shlex.split(args))
    return calls


def parse_all(script: str) -> list:
    parser = build_parser()
    calls = safbench_calls(SCRIPTS / script)
    assert calls, f"no safbench call found in {script}"
    return [parser.parse_args(argv) for argv in calls]


def test_main_job_grids_times_and_reports() -> None:
    grid, overhead, report = parse_all("quick.sh")
    assert grid.command == "grid" and (SCRIPTS.parent / grid.file).is_file()
    assert overhead.command == "overhead" and overhead.shape == "fashionmnist" and overhead.models == ["cnn_small"]
    assert overhead.out.startswith(grid.out) and report.command == "report" and report.results == grid.out


def test_fashionmnist_evidence_script() -> None:
    parsed = parse_all("fashionmnist_evidence.sh")
    assert [a.command for a in parsed] == ["grid", "hessian", "landscape", "landscape", "landscape", "report"]
    assert (SCRIPTS.parent / parsed[0].file).is_file()


def test_gpu_script_covers_every_shape_on_cuda() -> None:
    parsed = parse_all("gpu_overhead.sh")
    overhead = [a for a in parsed if a.command == "overhead"]
    assert {a.shape for a in overhead} == {"cifar10", "cifar100", "imagenet"}
    assert all(a.device == "cuda" for a in overhead)
    assert any(a.loop for a in overhead) and any(a.store_report for a in overhead)
    assert parsed[-1].command == "report"


def test_a_renamed_flag_would_be_caught(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text('.venv/bin/safbench overhead --device cpu \\\n  --batchsize 8 --out "$OUT"\n')
    (argv,) = safbench_calls(script)
    assert argv == ["overhead", "--device", "cpu", "--batchsize", "8", "--out", "X"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_fashionmnist_regime_script() -> None:
    parsed = parse_all("fashionmnist_regime.sh")
    assert [p.command for p in parsed] == ["grid", "grid", "report"]
    assert parsed[0].file.endswith("fashionmnist-regime.yaml")


def test_fashionmnist_regime_questions_script_and_grid_extend_the_committed_grid() -> None:
    from bench.grid import expand, load_grid

    parsed = parse_all("fashionmnist_regime_questions.sh")
    assert [p.command for p in parsed] == ["grid", "grid", "grid", "report"] and parsed[0].dry_run
    assert {p.file for p in parsed[:3]} == {"grids/fashionmnist-regime-questions.yaml"}
    committed = {c.run_dir.name for c in expand(load_grid(SCRIPTS.parent / "grids/fashionmnist-regime.yaml"))}
    questions = [c.run_dir.name for c in expand(load_grid(SCRIPTS.parent / parsed[0].file))]
    assert committed <= set(questions) and len(questions) == len(set(questions)) == len(committed) + 65


def test_fashionmnist_regime_lambda_script() -> None:
    parsed = parse_all("fashionmnist_regime_lambda.sh")
    assert [p.command for p in parsed] == ["grid", "grid", "grid", "report"]
    assert parsed[0].dry_run and parsed[0].estimate
    assert {p.file for p in parsed[:3]} == {"grids/fashionmnist-regime-lambda.yaml"}
