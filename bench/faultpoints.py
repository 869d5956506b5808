"""Test-only hooks that stop a process at a named point, so that fault tests force their interleavings.

    SAFBENCH_CRASH_AT=<point>[,<point>...]        os._exit(CRASH_EXIT) on reaching a point (like SIGKILL:
                                                  no cleanup, no finally, no atexit)
    SAFBENCH_PAUSE_AT=<point>:<entered>:<release> on reaching <point>, create the file <entered> and wait
                                                  until the file <release> exists (a barrier the test owns)

A point is a name such as "epoch-1" (the start of epoch 1), "checkpoint-shards-e2" (every rank has written
its epoch-2 shard, before the main checkpoint), "after-checkpoint-e2" (the checkpoint is written, metrics.csv
and summary.json are not), "before-summary" (metrics.csv complete, summary.json not written) or
"write-<file name>" (inside an atomic write: the temporary file written, not yet renamed into place).
A point may be qualified by rank, "checkpoint-shards-e2@1", to stop one rank only.
With neither variable set (always, outside tests) `reached` costs two dictionary look-ups.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CRASH_ENV = "SAFBENCH_CRASH_AT"
PAUSE_ENV = "SAFBENCH_PAUSE_AT"
CRASH_EXIT = 86


def _matches(wanted: str, point: str, rank: int | None) -> bool:
    name, _, at = wanted.partition("@")
    return name == point and (not at or (rank is not None and int(at) == rank))


def reached(point: str, rank: int | None = None) -> None:
    crash = os.environ.get(CRASH_ENV)
    if crash and any(_matches(w.strip(), point, rank) for w in crash.split(",")):
        os._exit(CRASH_EXIT)
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        wanted, entered, release = pause.split(":", 2)
        if _matches(wanted, point, rank):
            Path(entered).touch()
            while not Path(release).exists():
                time.sleep(0.02)
