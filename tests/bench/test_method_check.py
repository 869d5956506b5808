"""`safbench check-method`: the conformance check from the command line, and its lr-range check, which
needs the run's own schedule code (bench.schedules) and so lives in bench."""

from __future__ import annotations

import pytest

import bench.schedules
import optimizers
from bench.method_check import lr_range_problems

from ..cli_util import run_main


@pytest.mark.parametrize("name", optimizers.methods())
def test_every_method_gets_the_schedules_true_lr_range(name: str) -> None:
    assert lr_range_problems(name) == []


def test_a_cosine_range_reported_as_constant_is_caught(monkeypatch) -> None:
    """GSAM's radius would silently stop decaying: every other test passes with this mutation."""
    real = bench.schedules.lr_range
    monkeypatch.setattr(bench.schedules, "lr_range",
                        lambda c: (c.lr, c.lr) if c.schedule == "cosine" else real(c))
    failures = lr_range_problems("gsam")
    assert len(failures) == 2 and all("schedule=cosine" in f and "lr_min=0.1" in f for f in failures)
    assert {"warmup_epochs=0" in failures[0], "warmup_epochs=2" in failures[1]} == {True}


def test_check_method_passes_looksam_and_names_each_check() -> None:
    result = run_main("check-method", "looksam", "--no-ddp")
    assert result.returncode == 0, result.stdout
    for check in ("spec", "seed", "resume", "restore", "passes", "dtypes", "fp16 skip", "lr range"):
        assert f"ok   {check}" in result.stdout
    assert result.stdout.rstrip().endswith("looksam: passes")


def test_check_method_fails_in_one_line_per_failure(monkeypatch) -> None:
    monkeypatch.setattr(bench.schedules, "lr_range", lambda c: (c.lr, c.lr))
    result = run_main("check-method", "gsam", "--no-ddp")
    assert result.returncode == 1
    assert "FAIL lr range" in result.stdout and "gsam: fails 1 of 8 checks" in result.stdout


def test_check_method_refuses_an_unknown_method_in_one_line() -> None:
    result = run_main("check-method", "nope")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"safbench: error: method 'nope' is unknown: allowed methods are {', '.join(optimizers.methods())}"]
