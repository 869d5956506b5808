"""`safbench overhead --against` with real worker processes and git worktrees, in a temporary repository.

The repository holds a copy of this checkout's packages, so the base (a temporary worktree of REF) and the
head (the working tree) are separate code trees that the workers import. No timing is asserted: with the
fewest round pairs (6) a one-sided signed-rank test cannot reach p < 0.01, so identical code exits 0 by
the rule, not by the machine's luck (a budget of 1e-9 s leaves exactly those 6 pairs). A kill lands at a
fault point (SAFBENCH_CRASH_AT), never at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.faultpoints import CRASH_ENV, CRASH_EXIT
from bench.measure import worktree
from tests.cli_util import run_main

ROOT = Path(__file__).resolve().parents[3]
FAST = ("overhead", "--device", "cpu", "--models", "mlp_tiny", "--methods", "sgd", "saf", "--batch-size", "8",
        "--steps", "1", "--warmup", "1", "--num-samples", "64", "--budget-s", "1e-9")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def state(repo: Path) -> tuple[str, str, str, bytes]:
    """What the user sees of the checkout: HEAD, status, worktrees, and the index file's bytes."""
    return (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain", "--untracked-files=all"),
            git(repo, "worktree", "list", "--porcelain"), (repo / ".git" / "index").read_bytes())


@pytest.fixture(scope="module")
def code_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with this checkout's packages; one uncommitted, unstaged edit in the working tree."""
    repo = tmp_path_factory.mktemp("code") / "repo"
    repo.mkdir()
    for package in ("optimizers", "bench"):
        shutil.copytree(ROOT / package, repo / package, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@t")
    git(repo, "config", "user.name", "t")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "code")
    (repo / "notes.txt").write_text("an untracked file of the user\n")
    return repo


@pytest.mark.slow
def test_against_head_runs_and_exits_0(code_repo: Path, tmp_path: Path) -> None:
    before = state(code_repo)
    result = run_main(*FAST, "--against", "HEAD", "--out", str(tmp_path), cwd=code_repo)
    assert result.returncode == 0, result.stderr
    assert "unchanged" in result.stdout and "6 round pairs" in result.stdout
    assert state(code_repo) == before  # no worktree left, nothing of the user's changed
    assert [p.name.split("-")[0] for p in sorted(tmp_path.iterdir())] == ["against", "rounds"]
    rounds = pd.read_csv(next(tmp_path.glob("rounds-*.csv")))
    firsts = rounds.drop_duplicates("pair").sort_values("pair")["first"].tolist()
    assert firsts == ["base", "head"] * 3  # ABBA: the side that runs first alternates
    assert set(rounds["code_commit"]) == {git(code_repo, "rev-parse", "HEAD").strip()}


@pytest.mark.slow
def test_a_ref_whose_code_cannot_run_is_one_line_and_exit_2(code_repo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    git(code_repo, "worktree", "add", "-q", "--detach", str(broken), "HEAD")
    (broken / "optimizers" / "__init__.py").write_text("raise ImportError('optimizers broken on purpose')\n")
    git(broken, "commit", "-qam", "broken")
    ref = git(broken, "rev-parse", "HEAD").strip()
    git(code_repo, "worktree", "remove", "--force", str(broken))
    before = state(code_repo)
    result = run_main(*FAST, "--against", ref, cwd=code_repo)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"REF {ref} ({ref[:12]}) cannot run: ImportError: optimizers broken on purpose" in lines[0]
    assert state(code_repo) == before


def test_the_worktree_is_made_and_removed(code_repo: Path) -> None:
    before = state(code_repo)
    commit = worktree.resolve(code_repo, "HEAD")
    with worktree.checkout(code_repo, commit) as path:
        assert (path / "bench" / "measure" / "worker.py").is_file()
        assert git(path, "rev-parse", "HEAD").strip() == commit
        assert [p for p, _ in worktree.ours(code_repo)] == [path]
    assert not path.exists() and state(code_repo) == before


@pytest.mark.slow
def test_a_killed_comparison_leaves_the_checkout_alone_and_the_next_cleans_up(code_repo: Path) -> None:
    before = state(code_repo)
    env = {**os.environ, CRASH_ENV: "against-worktree-made"}
    killed = subprocess.run([sys.executable, "-m", "bench", *FAST, "--against", "HEAD"], cwd=code_repo, env=env,
                            capture_output=True, text=True)
    assert killed.returncode == CRASH_EXIT, killed.stderr  # os._exit at the point: no cleanup ran
    (left, pid), = worktree.ours(code_repo)
    assert left.is_dir() and pid != os.getpid()
    head, status, _, index = state(code_repo)
    assert (head, status, index) == (before[0], before[1], before[3])  # the user's tree and index untouched
    result = run_main(*FAST, "--against", "HEAD", cwd=code_repo)  # the next comparison removes it
    assert result.returncode == 0, result.stderr
    assert not left.exists() and state(code_repo) == before


def test_remove_stale_spares_a_live_comparison(code_repo: Path) -> None:
    commit = worktree.resolve(code_repo, "HEAD")
    with worktree.checkout(code_repo, commit) as mine:
        assert worktree.remove_stale(code_repo) == [] and mine.exists()  # ours: this process is alive


def test_a_bad_ref_is_one_line(code_repo: Path) -> None:
    result = run_main(*FAST, "--against", "no-such-branch", cwd=code_repo)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--against 'no-such-branch' names no commit" in result.stderr


@pytest.mark.slow
def test_sigterm_while_timing_removes_the_worktree(code_repo: Path, tmp_path: Path) -> None:
    before = state(code_repo)
    entered, release = tmp_path / "entered", tmp_path / "release"
    env = {**os.environ, "SAFBENCH_PAUSE_AT": f"against-workers-ready:{entered}:{release}"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", *FAST, "--against", "HEAD"], cwd=code_repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not entered.exists():  # both workers are up and the base worktree is in use
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert len(worktree.ours(code_repo)) == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        release.touch()
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "safbench: terminated (SIGTERM)"
    assert worktree.ours(code_repo) == [] and state(code_repo) == before
