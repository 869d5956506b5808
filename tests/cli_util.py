"""`safbench` called in-process: `main(argv)` with its output captured, as a subprocess would report it.

The tier for CLI tests that need no real process (bad input, flags, config files): no interpreter start and
no torch import per call. Tests that kill, race, or launch torchrun or submitit start real processes."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from bench.cli import main


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_main(*args: str, cwd: str | Path | None = None) -> CliResult:
    """main(args)'s exit status (argparse's own exits included) and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            contextlib.chdir(cwd or Path.cwd()):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())
