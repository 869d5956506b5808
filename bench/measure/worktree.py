"""The base code of a comparison: a git ref checked out into a temporary worktree, removed afterwards.

`git worktree add --detach` writes the checkout into a fresh temporary folder and its bookkeeping into
the repository's git directory only: the user's working tree, index and HEAD are never touched. The
folder's name carries the pid of the process that made it (`safbench-base-<pid>-<random>`); a process
killed before removing its worktree leaves it behind, and the next comparison in the same repository
removes every such worktree whose process is gone (`remove_stale`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .. import faultpoints
from ..errors import UsageError

PREFIX = "safbench-base-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-")


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=check)


def repo_root(cwd: Path | None = None) -> Path:
    """The top of the git working tree holding `cwd`; UsageError outside one."""
    try:
        out = git(cwd or Path.cwd(), "rev-parse", "--show-toplevel", check=False)
    except FileNotFoundError:
        raise UsageError("--against needs git on PATH") from None
    if out.returncode != 0:
        raise UsageError(f"--against needs a git checkout: {cwd or Path.cwd()} is not inside one")
    return Path(out.stdout.strip()).resolve()


def resolve(repo: Path, ref: str) -> str:
    """The commit `ref` names in `repo`; UsageError naming the ref when it names none."""
    out = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if out.returncode != 0:
        raise UsageError(f"--against {ref!r} names no commit in {repo} (nor a stored rounds file)")
    return out.stdout.strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ours(repo: Path) -> list[tuple[Path, int]]:
    """The worktrees of `repo` that a comparison made, with the pid of the process that made each."""
    out = git(repo, "worktree", "list", "--porcelain").stdout
    found = []
    for line in out.splitlines():
        if line.startswith("worktree "):
            path = Path(line.removeprefix("worktree "))
            m = _NAME.match(path.name)
            if m:
                found.append((path, int(m.group(1))))
    return found


def remove(repo: Path, path: Path) -> None:
    git(repo, "worktree", "remove", "--force", str(path), check=False)
    if path.exists():  # not registered any more (or git refused): the folder is ours, remove it anyway
        subprocess.run(["rm", "-rf", str(path)], check=False)
    git(repo, "worktree", "prune", check=False)


def remove_stale(repo: Path) -> list[Path]:
    """Remove the worktrees left by comparisons whose process is gone; returns their paths."""
    stale = [path for path, pid in ours(repo) if pid != os.getpid() and not _alive(pid)]
    for path in stale:
        remove(repo, path)
    git(repo, "worktree", "prune", check=False)
    return stale


@contextlib.contextmanager
def checkout(repo: Path, commit: str) -> Iterator[Path]:
    """`commit` checked out, detached, in a new temporary folder that is removed on leaving."""
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    path.rmdir()  # git makes the folder itself
    try:
        out = git(repo, "worktree", "add", "--detach", "--quiet", str(path), commit, check=False)
        if out.returncode != 0:
            lines = (out.stderr.strip() or "git worktree add failed").splitlines()
            raise UsageError(f"cannot check out {commit[:12]} into a temporary worktree: {lines[-1]}")
        faultpoints.reached("against-worktree-made")
        yield path
    finally:
        remove(repo, path)
