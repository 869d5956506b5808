"""Base vs head: the same methods of two code trees timed in alternating rounds, each tree in its own process.

Each side is a worker process (bench/measure/worker.py) that builds the same model, data and methods from
the same settings and seed, warms up, then times one round whenever asked. Only one side runs at a time
and the order alternates ABBA (base-head, head-base, ...), so a machine that slows down or speeds up
(other jobs, clocks, heat) charges both sides alike, and neither always runs first after the other's
round. Round pairs are taken until the rounds' budget is spent. Samples: per side and method, seconds per step.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .. import faultpoints
from ..errors import UsageError

WORKER = Path(__file__).with_name("worker.py")
MIN_PAIRS = 6
SIDES = ("base", "head")


ADDR_NO_RANDOMIZE = 0x0040000  # linux/personality.h


def _same_addresses() -> None:
    """In the worker before it starts: no address-space randomisation. Two processes of identical code then
    lay out their memory alike; with randomised addresses, buffers that alias in the cache differ per
    process, and in pilot comparisons (not stored) identical code ran up to 6-8% apart in CPU time."""
    try:
        ctypes.CDLL(None, use_errno=True).personality(ADDR_NO_RANDOMIZE)
    except (OSError, AttributeError):  # not Linux: randomised, as before
        pass


class WorkerError(Exception):
    """A side's code could not be built, warmed up or timed; the message is one line."""


class Worker:
    """One side's process; `round()` asks it for one round of step times."""

    def __init__(self, side: str, root: Path, settings: dict[str, Any]) -> None:
        self.side, self.root = side, root
        self._log: IO[str] = tempfile.TemporaryFile("w+")  # its stderr, for the last line of a crash
        env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"]), "PYTHONDONTWRITEBYTECODE": "1"}
        # glibc moves its mmap threshold with each process's history of frees, so two processes of the same
        # code can place the same tensors differently; a fixed threshold takes that difference away.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 << 20))
        env["PYTHONHASHSEED"] = "0"  # the same dict and set orders in both processes
        env.pop("PYTHONPATH", None)
        env.pop("SAFBENCH_CRASH_AT", None)  # fault points are the comparing process's, not the timed code's
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "--root", str(root)], cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     preexec_fn=_same_addresses)
        self._send(json.dumps(settings))

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the answer (none) says why

    def _answer(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._log.seek(0)
            tail = [x for x in self._log.read().strip().splitlines() if x.strip()]
            raise WorkerError(tail[-1].strip() if tail else f"the worker exited with status {self.proc.returncode}")
        answer = json.loads(line)
        if "error" in answer:
            raise WorkerError(answer["error"])
        return answer

    def ready(self) -> dict[str, Any]:
        return self._answer()

    def round(self) -> dict[str, float]:
        self._send("round")
        return self._answer()["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self._send("quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._log):
            stream.close()


@dataclass
class Samples:
    """Seconds per step, per side and method, round pair by round pair; and what the rounds cost."""

    methods: tuple[str, ...]
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # side -> method -> per pair
    order: list[str] = field(default_factory=list)  # which side ran first in each pair
    setup_s: float = 0.0  # starting and warming up both workers
    rounds_s: float = 0.0

    @property
    def pairs(self) -> int:
        return len(self.order)


def _start(roots: dict[str, Path], settings: dict[str, Any], describe: Callable[[str], str]) -> dict[str, Worker]:
    workers: dict[str, Worker] = {}
    try:
        for side in roots:
            workers[side] = Worker(side, roots[side], settings)
        for side in roots:  # both build and warm up at once: nothing is timed yet
            try:
                workers[side].ready()
            except WorkerError as exc:
                raise UsageError(f"{describe(side)} cannot run: {exc}") from None
    except BaseException:
        for w in workers.values():
            w.proc.kill()
            w.close()
        raise
    return workers


def same_length_roots(roots: dict[str, Path], folder: Path) -> dict[str, Path]:
    """Each root behind a link <folder>/<side>: "base" and "head" have one length, so both workers get the same
    argv, cwd and module paths, byte for byte in size. With address randomisation off, the length of what the
    kernel copies onto a new process's stack shifts every address after it (Mytkowicz et al., ASPLOS 2009);
    on this project's CPU identical code ran 15-20% apart from the moment the base worktree's name lost a digit."""
    links = {}
    for side, root in roots.items():
        links[side] = folder / side
        links[side].symlink_to(Path(root).resolve(), target_is_directory=True)
    return links


def compare(roots: dict[str, Path], settings: dict[str, Any], *, budget_s: float, min_pairs: int = MIN_PAIRS,
            describe: Callable[[str], str] = str, progress: Callable[[int], None] | None = None) -> Samples:
    """Time both roots' methods in alternating rounds for `budget_s` seconds (at least `min_pairs` pairs).

    The budget counts the rounds only: starting and warming up the workers takes 10 s on an idle 2-core
    machine and 30-40 s on a loaded one, and that time measures nothing.

    `roots` names the code of each side ("base", "head"); with "head" alone, its rounds are simply repeated
    (against a stored rounds file)."""
    start = time.perf_counter()
    sides = tuple(s for s in SIDES if s in roots)
    links = Path(tempfile.mkdtemp(prefix="safbench-roots-"))
    try:
        return _compare(same_length_roots(roots, links), settings, sides, start, budget_s=budget_s,
                        min_pairs=min_pairs, describe=describe, progress=progress)
    finally:
        for link in links.iterdir():
            link.unlink()
        links.rmdir()


def _compare(roots: dict[str, Path], settings: dict[str, Any], sides: tuple[str, ...], start: float, *,
             budget_s: float, min_pairs: int, describe: Callable[[str], str],
             progress: Callable[[int], None] | None) -> Samples:
    workers = _start(roots, settings, describe)
    samples = Samples(tuple(settings["methods"]), {s: {m: [] for m in settings["methods"]} for s in sides})
    try:
        samples.setup_s = time.perf_counter() - start
        faultpoints.reached("against-workers-ready")
        rounds_start = time.perf_counter()
        while samples.pairs < min_pairs or time.perf_counter() - rounds_start < budget_s:
            order = sides if samples.pairs % 2 == 0 else sides[::-1]  # ABBA
            for side in order:
                try:
                    times = workers[side].round()
                except WorkerError as exc:
                    raise UsageError(f"{describe(side)} failed while timed: {exc}") from None
                for method in samples.methods:
                    samples.times[side][method].append(times[method])
            samples.order.append(order[0])
            if progress:
                progress(samples.pairs)
        samples.rounds_s = time.perf_counter() - rounds_start
    finally:
        for w in workers.values():
            w.close()
    return samples
