"""One side of a base-vs-head comparison: a process that times the methods of one code tree, round by round.

Run as a script, never imported by the comparing process:

    python <this file> --root CODE_ROOT

CODE_ROOT (the working tree, or the temporary worktree of the base ref) goes first on sys.path, so the
`optimizers` and `bench` packages timed are that tree's, while this file, the protocol, is always the
head's: a base ref made before the gate existed is timed the same way. It uses only what every version of
the step benchmark has (`OverheadConfig`, `StepBenchmark`, its `warm_up()` and `blocks`).

Protocol, one JSON object per line: stdin gets the settings, then "round" (time every method once, in a
freshly shuffled order) or "quit"; stdout answers {"ready": ...} after building and warming up, then
{"times": {method: seconds per step}} per round (settings' "timer": "wall" or "process" CPU time), or
{"error": "one line"} before exiting with ERROR_EXIT.
Anything the timed code prints goes to stderr, so the answers stay parseable.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ERROR_EXIT = 3
# "process": CPU seconds of this process (every thread). On a CPU shared with other jobs it leaves out
# the time slices the scheduler gives to them, which wall time charges to whichever block was running.
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def _answer(out: Any, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def _benchmark(settings: dict[str, Any]) -> tuple[Any, Any]:
    """The root's step benchmark, built and warmed up; and a device synchroniser."""
    import torch

    from bench.measure.config import OverheadConfig
    from bench.measure.steps import StepBenchmark

    torch.set_num_threads(int(settings.pop("threads")))
    device = torch.device(settings.pop("device"))
    config = OverheadConfig(device=device, **{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in settings.items()})
    bench = StepBenchmark(config)
    bench.warm_up()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return bench, sync


def _round(bench: Any, sync: Any, rng: random.Random, clock: Any) -> dict[str, float]:
    order = list(bench.blocks)
    rng.shuffle(order)
    times: dict[str, float] = {}
    gc.disable()  # a collection landing in one block would be charged to that method alone
    try:
        for name in order:
            block = bench.blocks[name]
            sync()
            start = clock()
            block.run(block.steps)
            sync()
            times[name] = (clock() - start) / block.steps
    finally:
        gc.enable()
    return times


def main(argv: list[str]) -> int:
    root = Path(argv[argv.index("--root") + 1]).absolute()  # not resolved: the link's length is the point
    sys.path[:] = [str(root)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
    answers = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # whatever the timed code prints must not mix with the answers
    try:
        settings = json.loads(sys.stdin.readline())
        seed = int(settings.get("seed", 0))
        clock = CLOCKS[settings.pop("timer", "wall")]
        cpus = settings.pop("cpus", None)
        if cpus:  # both sides on the same core(s): neither gets a core that other jobs leave emptier
            os.sched_setaffinity(0, cpus)
        import bench

        if Path(bench.__file__).resolve().parents[1] != root.resolve():
            raise ImportError(f"bench imported from {Path(bench.__file__).parent}, not from {root}")
        bench_, sync = _benchmark(settings)
    except BaseException as exc:  # noqa: BLE001 - any failure of the root's code is reported in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _answer(answers, {"error": f"{type(exc).__name__}: {first}".rstrip(": ")})
        return ERROR_EXIT
    _answer(answers, {"ready": True, "methods": list(bench_.blocks),
                      "steps": {n: b.steps for n, b in bench_.blocks.items()}})
    rng = random.Random(seed)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        try:
            _answer(answers, {"times": _round(bench_, sync, rng, clock)})
        except BaseException as exc:  # noqa: BLE001
            _answer(answers, {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
            return ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
