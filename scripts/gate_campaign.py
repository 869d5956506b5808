"""The overhead gate's evidence (results/overhead/gate/): its false-alarm rate and its power, measured.

    python scripts/gate_campaign.py calibrate   # the injected work's cost as a share of SAF's step
    python scripts/gate_campaign.py run         # every comparison not yet stored, one at a time (resumable)
    python scripts/gate_campaign.py samepath 20 # identical code, the shipped design (campaign B's false alarms)
    python scripts/gate_campaign.py power 15:58 # campaign B's power: injected slowdowns, the shipped design,
                                                # no comparison started after 15:58 UTC (resumable)

`run` makes scratch commits on throwaway branches (gate-scratch-<kind>-<size>, never merged): the commit
under test (BASE, this checkout's HEAD) plus extra arithmetic proportional to the batch, a matrix product of
the flattened inputs with a fixed [D, 256] matrix, repeated, in SAF's step only ("saf") or in every method's step
("all"), the repetitions set from the calibration for about 3, 5 and 10% of SAF's step. Each comparison runs
`safbench overhead --against BASE` in a scratch worktree at that commit; an identical one runs
`--against HEAD` at BASE itself. Each stores its against-*.csv and rounds-*.csv under results/overhead/gate/
as <condition>-<rep>; a stored comparison is never rerun.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "overhead" / "gate"
SCRATCH = Path("/work/gate-scratch")  # the scratch worktree (outside this checkout)
SIZES = (0.03, 0.05, 0.10)
REPS = 5
IDENTICAL_PER_REP = 4  # 20 comparisons of identical code
SETTINGS = ["--device", "cpu", "--models", "cnn_small", "--methods", "sgd", "saf", "--batch-size", "32",
            "--steps", "1", "--budget-s", "30"]
WASTE = '''

_WASTE: dict = {{}}


def _injected_slowdown(inputs, reps: int = {reps}) -> None:
    """SCRATCH COMMIT (gate evidence, never merged): extra arithmetic proportional to the batch."""
    with torch.no_grad():
        x = inputs.flatten(1)
        key = (x.shape[1], x.dtype, x.device)
        if key not in _WASTE:
            _WASTE[key] = torch.full((x.shape[1], 256), 1e-3, dtype=x.dtype, device=x.device)
        for _ in range(reps):
            (x @ _WASTE[key]).sum()
'''


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def calibrate() -> None:
    """SAF's step and the injected product at several widths, interleaved in one process (CPU time)."""
    import pandas as pd
    import torch

    sys.path.insert(0, str(ROOT))
    from bench import io
    from bench.measure.config import OverheadConfig
    from bench.measure.steps import StepBenchmark
    from bench.provenance import provenance

    torch.set_num_threads(1)
    config = OverheadConfig(model="cnn_small", methods=("sgd", "saf"), batch_size=32, steps=1, warmup=3)
    bench = StepBenchmark(config)
    bench.warm_up()
    scope: dict = {"torch": torch}
    exec(WASTE.format(reps=0).replace("reps: int = 0", "reps: int"), scope)
    inputs = bench.pool.images[0]
    widths = (2, 4, 8, 16)
    rows = []
    for rnd in range(30):
        t0 = time.process_time()
        bench.blocks["saf"].run(1)
        saf = time.process_time() - t0
        for w in widths:
            t0 = time.process_time()
            scope["_injected_slowdown"](inputs, w)
            rows.append({"round": rnd, "reps": w, "injected_s": time.process_time() - t0, "saf_step_s": saf})
    frame = pd.DataFrame(rows)
    frame["share_of_saf_step"] = frame["injected_s"] / frame["saf_step_s"]
    prov = provenance(torch.device("cpu"), "python scripts/gate_campaign.py calibrate")
    OUT.mkdir(parents=True, exist_ok=True)
    io.write_csv(OUT / "calibration.csv", frame.assign(**prov))
    print(frame.groupby("reps")["share_of_saf_step"].median())


def widths() -> dict[float, int]:
    """Repetitions for each size, from the calibration's median share per repetition (cost is linear in it)."""
    import pandas as pd

    frame = pd.read_csv(OUT / "calibration.csv")
    per_unit = (frame["share_of_saf_step"] / frame["reps"]).median()
    return {size: max(1, round(size / per_unit)) for size in SIZES}


def scratch_commit(base: str, kind: str, size: float, width: int, branch: str | None = None,
                   scratch: Path = SCRATCH) -> str:
    """BASE plus the injected work, committed on BRANCH (gate-scratch-<kind>-<size>) in the worktree
    SCRATCH; its hash."""
    branch = branch or f"gate-scratch-{kind}-{round(100 * size)}"
    exists = subprocess.run(["git", "rev-parse", "--verify", "-q", branch], cwd=ROOT, capture_output=True, text=True)
    if exists.returncode == 0 and git("rev-parse", f"{branch}~1") == base:
        return exists.stdout.strip()
    git("checkout", "-q", "--detach", base, cwd=scratch)
    target = scratch / ("optimizers/saf.py" if kind == "saf" else "optimizers/base.py")
    text = target.read_text() + WASTE.format(reps=width)
    if kind == "saf":  # in SAF's regularizer: every SAF step, no other method's
        anchor = "        self._check_indices(indices)\n"
    else:  # in the base step: SGD's and SAF's (and every method using the shared step)
        anchor = "        self.base_optimizer.zero_grad(set_to_none=True)\n        logits = self.forward(inputs)\n"
    assert text.count(anchor) == 1, anchor
    text = text.replace(anchor, anchor + "        _injected_slowdown(inputs)\n")
    target.write_text(text)
    git("commit", "-q", "-am", f"SCRATCH (never merge): {kind} step +{100 * size:g}% injected work, {width} products",
        cwd=scratch)
    git("branch", "-f", branch, "HEAD", cwd=scratch)
    return git("rev-parse", "HEAD", cwd=scratch)


def plan() -> list[tuple[str, int]]:
    """Conditions interleaved rep by rep, so the machine's load of the hour spreads over all of them."""
    order = []
    small = [f"{kind}-{round(100 * size)}" for size in SIZES if size < 0.10 for kind in ("saf", "all")]
    for rep in range(REPS):  # per rep: identical, the two 3% kinds, identical, the two 5% kinds
        ident = [("identical", rep * IDENTICAL_PER_REP + i) for i in range(IDENTICAL_PER_REP)]
        order += ident[:1] + [(c, rep) for c in small[:2]] + ident[1:2] + [(c, rep) for c in small[2:]]
    for rep in range(REPS):  # 10%, caught every time so far, and the other identical runs last
        order += [(f"{kind}-10", rep) for kind in ("saf", "all")]
        order += [("identical", rep * IDENTICAL_PER_REP + i) for i in range(2, IDENTICAL_PER_REP)]
    return order


def _campaign_base(stored: Path, scratch: Path) -> str:
    """The base commit of a campaign: the stored one when resuming, else a clean HEAD; its scratch worktree made."""
    base = json.loads(stored.read_text())["base"] if stored.exists() else git("rev-parse", "HEAD")
    if not stored.exists() and git("status", "--porcelain", "--untracked-files=no"):
        sys.exit("commit first: the comparisons name this checkout's HEAD as their base")
    if not scratch.exists():
        git("worktree", "add", "-q", "--detach", str(scratch), base)
    return base


def run() -> None:
    """Resume with the base of the stored comparisons (commits.json) when there are some."""
    stored = OUT / "commits.json"
    base = _campaign_base(stored, SCRATCH)
    width = widths()
    commits = {f"{k}-{round(100 * s)}": scratch_commit(base, k, s, width[s]) for k in ("saf", "all") for s in SIZES}
    commits["identical"] = base
    (OUT / "commits.json").write_text(json.dumps({"base": base, **commits}, indent=1) + "\n")
    (OUT / "rounds").mkdir(parents=True, exist_ok=True)
    python = ROOT / ".venv" / "bin" / "python"
    for cond, rep in plan():
        name = f"{cond}-{rep:02d}"
        if (OUT / f"{name}.csv").exists():
            continue
        git("checkout", "-q", "--detach", commits[cond], cwd=SCRATCH)
        ref = "HEAD" if cond == "identical" else base
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [str(python), "-m", "bench", "overhead", *SETTINGS, "--against", ref, "--out", tmp]
            t0 = time.time()
            done = subprocess.run(cmd, cwd=SCRATCH, capture_output=True, text=True)
            print(f"{name}: exit {done.returncode} in {time.time() - t0:.0f} s", flush=True)
            print(done.stdout + done.stderr, flush=True)
            if done.returncode not in (0, 1):
                continue
            shutil.move(next(Path(tmp).glob("rounds-*.csv")), OUT / "rounds" / f"{name}.csv")
            against = next(Path(tmp).glob("against-*.csv"))
            import pandas as pd

            frame = pd.read_csv(against).assign(condition=cond, rep=rep, exit_status=done.returncode,
                                                wall_s=time.time() - t0, scratch_commit=commits[cond])
            frame.to_csv(OUT / f".{name}.csv.tmp", index=False)
            Path(OUT / f".{name}.csv.tmp").rename(OUT / f"{name}.csv")


POWER_SCRATCH = Path("/work/wt-power-scratch")  # campaign B's scratch worktree (outside this checkout)
POWER_ORDER = (("saf-5", "all-5", "saf-10", "all-10"), ("saf-3", "all-3"))  # interleaved rep by rep


def _load_sampler(path: Path, stop) -> None:
    """Append /proc/loadavg to PATH every 30 s until STOP is set (the load the comparisons ran under)."""
    import datetime

    new = not path.exists()
    with path.open("a") as out:
        if new:
            out.write("utc,load1,load5,load15,running_processes\n")
        while True:
            fields = Path("/proc/loadavg").read_text().split()[:4]
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            out.write(",".join([now, *fields]) + "\n")
            out.flush()
            if stop.wait(30):
                return


def power(until: str, control: bool = False) -> None:
    """Campaign B's power: the injected slowdowns of `run` (same calibration, same products), measured with
    the shipped design (both roots behind links of one length) against this checkout's HEAD as base.
    Scratch commits on branches power-scratch-<kind>-<size> (never merged), listed in commits-B.json;
    each comparison stored as <kind>-<size>-B-<rep>, with the 1-minute load average at its start and end;
    load-B.csv samples /proc/loadavg every 30 s while the campaign runs. No comparison starts after UNTIL
    (HH:MM, UTC). With CONTROL (`power HH:MM control`): instead, identical code run the same way, the scratch
    worktree at BASE against BASE, stored as control-B-<rep> (SGD's head/base in the saf-* runs, is it the
    processes or the injected code?)."""
    import datetime
    import os
    import threading

    import pandas as pd

    stored = OUT / "commits-B.json"
    base = _campaign_base(stored, POWER_SCRATCH)
    width = widths()
    commits = {}
    for kind in ("saf", "all"):
        for size in SIZES:
            branch = f"power-scratch-{kind}-{round(100 * size)}"
            commits[f"{kind}-{round(100 * size)}-B"] = scratch_commit(base, kind, size, width[size],
                                                                      branch=branch, scratch=POWER_SCRATCH)
    stored.write_text(json.dumps({"base": base, **commits}, indent=1) + "\n")
    (OUT / "rounds").mkdir(parents=True, exist_ok=True)
    python = ROOT / ".venv" / "bin" / "python"
    deadline = datetime.datetime.now(datetime.UTC).replace(
        hour=int(until.split(":")[0]), minute=int(until.split(":")[1]), second=0, microsecond=0)
    order = [(f"{c}-B", rep) for group in POWER_ORDER for rep in range(REPS) for c in group]
    if control:
        commits["control-B"] = base
        order = [("control-B", rep) for rep in range(REPS)]
    stop = threading.Event()
    sampler = threading.Thread(target=_load_sampler, args=(OUT / "load-B.csv", stop), daemon=True)
    sampler.start()
    try:
        for cond, rep in order:
            name = f"{cond}-{rep:02d}"
            if (OUT / f"{name}.csv").exists():
                continue
            if datetime.datetime.now(datetime.UTC) >= deadline:
                print(f"{until} UTC reached: no new comparison", flush=True)
                break
            git("checkout", "-q", "--detach", commits[cond], cwd=POWER_SCRATCH)
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [str(python), "-m", "bench", "overhead", *SETTINGS, "--against", base, "--out", tmp]
                load_start = os.getloadavg()[0]
                t0 = time.time()
                done = subprocess.run(cmd, cwd=POWER_SCRATCH, capture_output=True, text=True)
                wall = time.time() - t0
                print(f"{name}: exit {done.returncode} in {wall:.0f} s\n{done.stdout}{done.stderr}", flush=True)
                if done.returncode not in (0, 1):
                    continue
                shutil.move(next(Path(tmp).glob("rounds-*.csv")), OUT / "rounds" / f"{name}.csv")
                frame = pd.read_csv(next(Path(tmp).glob("against-*.csv"))).assign(
                    condition=cond, rep=rep, exit_status=done.returncode, wall_s=wall,
                    scratch_commit=commits[cond], campaign="B", load1_start=load_start,
                    load1_end=os.getloadavg()[0])
                frame.to_csv(OUT / f".{name}.csv.tmp", index=False)
                Path(OUT / f".{name}.csv.tmp").rename(OUT / f"{name}.csv")
    finally:
        stop.set()
        sampler.join()


def samepath(count: int) -> None:
    """Identical code (REF = HEAD) in this checkout with its current code: both roots behind links of one
    length (bench.measure.against.same_length_roots), stored as samepath-<n>."""
    if git("status", "--porcelain", "--untracked-files=no"):
        sys.exit("commit first")
    (OUT / "rounds").mkdir(parents=True, exist_ok=True)
    python = ROOT / ".venv" / "bin" / "python"
    for n in range(count):
        name = f"samepath-{n:02d}"
        if (OUT / f"{name}.csv").exists():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            cmd = [str(python), "-m", "bench", "overhead", *SETTINGS, "--against", "HEAD", "--out", tmp]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            print(f"{name}: exit {done.returncode} in {time.time() - t0:.0f} s\n{done.stdout}{done.stderr}", flush=True)
            if done.returncode not in (0, 1):
                continue
            import pandas as pd

            shutil.move(next(Path(tmp).glob("rounds-*.csv")), OUT / "rounds" / f"{name}.csv")
            frame = pd.read_csv(next(Path(tmp).glob("against-*.csv"))).assign(
                condition="samepath", rep=n, exit_status=done.returncode, wall_s=time.time() - t0,
                scratch_commit=git("rev-parse", "HEAD"))
            frame.to_csv(OUT / f".{name}.csv.tmp", index=False)
            Path(OUT / f".{name}.csv.tmp").rename(OUT / f"{name}.csv")


if __name__ == "__main__":
    if sys.argv[1] == "samepath":
        samepath(int(sys.argv[2]))
    elif sys.argv[1] == "power":
        power(sys.argv[2], control=sys.argv[3:] == ["control"])
    else:
        {"calibrate": calibrate, "run": run}[sys.argv[1]]()
