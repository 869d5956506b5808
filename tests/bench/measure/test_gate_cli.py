"""`safbench overhead --check / --limit / --against`: exit codes and one-line messages, with injected timings.

The timed parts are replaced (bench.measure.cli.measure_steps, bench.measure.gate.compare), so these tests
judge the gate's logic, never this machine's speed. The real processes and worktrees are in test_against.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.measure import cli, gate
from bench.measure.against import Samples
from bench.measure.rows import OverheadRow
from tests.cli_util import run_main

TINY = ("overhead", "--device", "cpu", "--models", "mlp_tiny", "--methods", "sgd", "saf")


def row(method: str, ratio: float, q1: float, q3: float) -> OverheadRow:
    return OverheadRow(model="mlp_tiny", shape="cifar10", image_shape="3x32x32", num_classes=10, method=method,
                       batch_size=8, precision="fp32", base_optimizer="sgd", steps_per_block=1, rounds=5,
                       warmup_steps=1, num_samples=64, timer="perf_counter", channels_last=False, compiled=False,
                       images_per_s_median=100 / ratio, images_per_s_q1=90, images_per_s_q3=110,
                       images_per_s_min=80, images_per_s_max=120, step_ms_median=10 * ratio,
                       time_ratio_median=ratio, time_ratio_q1=q1, time_ratio_q3=q3,
                       throughput_ratio_median=1 / ratio, state_bytes=1, step_peak_extra_bytes=None,
                       peak_mem_bytes=None, saf_store_bytes=None, saf_store_location=None, mesa_ema_bytes=None)


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """measure_steps replaced: SAF at 1.20x SGD (interquartile 1.15-1.25); records which models were timed."""
    timed: list[str] = []

    def fake(config, **_):  # noqa: ANN001, ANN003, ANN202
        timed.append(config.model)
        return [row("sgd", 1.0, 1.0, 1.0), row("saf", 1.2, 1.15, 1.25)]

    monkeypatch.setattr(cli, "measure_steps", fake)
    return timed


def test_limits_judge_the_median_ratio(measured: list[str], tmp_path: Path) -> None:
    low = run_main(*TINY, "--limit", "saf=0.5")
    assert low.returncode == 1
    assert low.stderr.strip().splitlines() == [
        "mlp_tiny saf: step time 1.200x SGD (interquartile [1.150, 1.250]) is over its limit 0.5"]
    assert run_main(*TINY, "--limit", "saf=3").returncode == 0
    assert run_main(*TINY, "--limit", "saf=1.2").returncode == 0  # at the limit is within it
    assert run_main(*TINY, "--check").returncode == 1  # the CPU default for SAF is 1.10 (bench.targets)
    assert run_main(*TINY, "--check", "--limit", "SAF=1.5").returncode == 0
    plain = run_main(*TINY, "--out", str(tmp_path))  # no --check: the table (and its CSV) only
    assert plain.returncode == 0 and len(list(tmp_path.glob("steps-cpu-*.csv"))) == 1


@pytest.mark.parametrize(("flag", "says"), [
    ("nosuch=1.2", "--limit 'nosuch=1.2' is invalid: expected METHOD=MAX with METHOD one of sgd"),
    ("saf=fast", "--limit 'saf=fast' is invalid: MAX must be a number > 0"),
    ("saf=0", "--limit 'saf=0' is invalid: MAX must be a number > 0"),
    ("saf=-1", "--limit 'saf=-1' is invalid: MAX must be a number > 0"),
    ("saf=nan", "--limit 'saf=nan' is invalid: MAX must be a number > 0"),
    ("saf", "--limit 'saf' is invalid: expected METHOD=MAX"),
])
def test_a_bad_limit_is_one_line_and_exit_2_before_timing(measured: list[str], flag: str, says: str) -> None:
    result = run_main(*TINY, "--limit", flag)
    assert result.returncode == 2 and measured == []
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0]


def test_default_limits_come_from_the_targets() -> None:
    from bench.targets import CI_LIMITS, STEP_TARGETS

    cpu = gate.default_limits("cpu")
    assert cpu["saf"] == next(t.high for t in CI_LIMITS if t.method == "saf")
    assert gate.default_limits("cuda")["saf"] == next(t.high for t in STEP_TARGETS if t.method == "saf"
                                                     and t.device == "cuda")
    assert all(v > 0 for v in cpu.values()) and "sgd" not in cpu


def test_history_rows_append(measured: list[str], tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    assert run_main(*TINY, "--check", "--limit", "saf=2", "--history", str(history)).returncode == 0
    assert run_main(*TINY, "--check", "--limit", "saf=2", "--history", str(history)).returncode == 0
    frame = pd.read_csv(history)
    assert list(frame["method"]) == ["sgd", "saf", "sgd", "saf"]
    for col in ("commit", "tree", "device_name", "threads", "torch_version", "step_ms", "ratio_to_sgd"):
        assert frame[col].notna().all()
    assert set(frame["tree"]) <= {"clean", "dirty"}


# ---- --against, timings injected ---------------------------------------------------------------------
def git_repo(path: Path) -> Path:
    path.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)
    (path / "file.txt").write_text("one\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "one"], check=True)
    return path


def fake_compare(slow: dict[str, float], seen: dict) -> object:
    def compare(roots, settings, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.update(roots=roots, settings=settings, exists={s: Path(r).is_dir() for s, r in roots.items()})
        rng = np.random.default_rng(0)
        n = 40
        drift = np.exp(rng.normal(0, 0.05, n))
        times = {side: {m: list(0.04 * drift * np.exp(rng.normal(0, 0.01, n)) * (slow.get(m, 1.0) if side == "head"
                                                                                  else 1.0))
                        for m in settings["methods"]} for side in ("base", "head")}
        return Samples(tuple(settings["methods"]), times, ["base", "head"] * (n // 2), 1.0, 2.0)
    return compare


@pytest.mark.parametrize(("slow", "code", "named"), [
    ({}, 0, []), ({"saf": 1.10}, 1, ["saf"]), ({"sgd": 1.08, "saf": 1.08}, 1, ["sgd", "saf"]),
])
def test_against_exit_status_and_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: dict, code: int,
                                       named: list[str]) -> None:
    repo, seen = git_repo(tmp_path / "repo"), {}
    monkeypatch.setattr(gate, "compare", fake_compare(slow, seen))
    result = run_main(*TINY, "--against", "HEAD", "--out", str(tmp_path / "out"), "--history",
                      str(tmp_path / "history.csv"), cwd=repo)
    assert result.returncode == code, result.stderr
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["method"]) == ["sgd", "saf"] and (history["ratio_low"] <= history["ratio_to_sgd"]).all()
    assert list(history["verdict"] == "slower") == [m in named for m in ("sgd", "saf")]
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == named
    assert all(line.split(": ", 1)[1].startswith("slower than HEAD: step time x1.") for line in lines)
    assert all("(95% CI [" in line for line in lines)
    assert seen["exists"] == {"base": True, "head": True} and seen["roots"]["head"] == repo.resolve()
    assert not seen["roots"]["base"].exists()  # the worktree is gone afterwards
    assert "worktree" not in subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True,
                                            text=True).stdout.split("\n", 1)[-1]
    against = pd.read_csv(next((tmp_path / "out").glob("against-cpu-*.csv")))
    assert list(against["method"]) == ["sgd", "saf"] and against["git_commit"].notna().all()
    assert len(pd.read_csv(next((tmp_path / "out").glob("rounds-cpu-*.csv")))) == 2 * 2 * 40


def test_against_gates_only_the_named_methods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = git_repo(tmp_path / "repo")
    monkeypatch.setattr(gate, "compare", fake_compare({"sgd": 1.10}, {}))
    # --methods saf: SGD is timed as the reference, but only SAF is gated (its ratio to SGD fell)
    result = run_main("overhead", "--device", "cpu", "--models", "mlp_tiny", "--methods", "saf",
                      "--against", "HEAD", cwd=repo)
    assert result.returncode == 0 and "slower" in result.stdout


def test_against_a_stored_rounds_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = git_repo(tmp_path / "repo")
    monkeypatch.setattr(gate, "compare", fake_compare({}, {}))
    assert run_main(*TINY, "--against", "HEAD", "--out", str(tmp_path / "out"), cwd=repo).returncode == 0
    stored = next((tmp_path / "out").glob("rounds-cpu-*.csv"))
    seen: dict = {}
    monkeypatch.setattr(gate, "compare", fake_compare({"saf": 1.15}, seen))
    result = run_main(*TINY, "--against", str(stored), cwd=repo)
    assert result.returncode == 1 and result.stderr.startswith("saf: ")
    assert set(seen["roots"]) == {"head"}  # only the working tree is timed
    other = run_main(*TINY, "--against", str(stored), "--batch-size", "16", cwd=repo)
    assert other.returncode == 2 and "batch_size=" in other.stderr and len(other.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "says"), [
    (("--against", "no-such-ref"), "--against 'no-such-ref' names no commit"),
    (("--against", "HEAD", "--budget-s", "0"), "--budget-s must be > 0"),
    (("--against", "HEAD", "--models", "mlp_tiny", "cnn_small"), "--against compares one model"),
])
def test_against_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple, says: str) -> None:
    repo = git_repo(tmp_path / "repo")
    monkeypatch.setattr(gate, "compare", lambda *a, **k: pytest.fail("timed despite bad input"))
    result = run_main("overhead", "--device", "cpu", "--models", "mlp_tiny", *args, cwd=repo)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert says in result.stderr


def test_against_outside_a_checkout(tmp_path: Path) -> None:
    result = run_main(*TINY, "--against", "HEAD", cwd=tmp_path)
    assert result.returncode == 2 and "needs a git checkout" in result.stderr


def test_against_with_limits_judges_the_heads_ratio_to_sgd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = git_repo(tmp_path / "repo")
    monkeypatch.setattr(gate, "compare", fake_compare({}, {}))
    over = run_main(*TINY, "--against", "HEAD", "--limit", "saf=0.5", cwd=repo)
    assert over.returncode == 1
    (line,) = over.stderr.strip().splitlines()
    assert line.startswith("saf: step time 1.0") and "(95% CI [" in line and line.endswith("over its limit 0.5")
    assert run_main(*TINY, "--against", "HEAD", "--limit", "saf=3", cwd=repo).returncode == 0


def test_the_ci_and_readme_gate_commands_parse() -> None:
    from bench.cli import build_parser
    from tests.test_scripts import safbench_calls

    root = Path(__file__).resolve().parents[3]
    (ci,) = safbench_calls(root / ".ci" / "run")
    readme = [line.split("run: ", 1)[1] for line in (root / "README.md").read_text().splitlines()
              if "run: .venv/bin/safbench overhead" in line]
    assert len(readme) == 1
    for argv in (ci, readme[0].split()[1:]):
        args = build_parser().parse_args(argv[: argv.index("||")] if "||" in argv else argv)
        assert args.against and "saf" in args.methods
