"""`safbench overhead --check / --limit / --against / --history`: the overhead gate a CI pipeline runs.

--check judges each method's median step-time ratio to SGD against a limit (bench.targets by default,
`--limit METHOD=MAX` to set one); --against REF times the working tree against REF (a git ref in a
temporary worktree, or a rounds file of an earlier run) and applies bench.measure.verdict's rule.
Exit status: 0 all within limits and no significant slowdown, 1 otherwise, 2 bad input or a REF whose
code cannot run (one line, before anything is timed where it can be known then).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import io
from ..errors import UsageError
from ..provenance import git_commit, provenance
from ..records import overhead_csv
from ..targets import CI_LIMITS, STEP_TARGETS
from . import verdict, worktree
from .against import SIDES, Samples, compare
from .methods import METHODS, REFERENCE
from .rows import OverheadRow, text_table

DEFAULT_BUDGET_S = 180.0
SETTING_KEYS = ("model", "shape", "batch_size", "precision", "steps", "warmup", "num_samples", "seed",
                "channels_last", "compile", "optimizer", "threads", "device", "timer")


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("gate (exit 1 on a broken limit or a significant slowdown)")
    g.add_argument("--check", action="store_true",
                   help="exit 1 when a method's median step-time ratio to SGD breaks its limit "
                        "(defaults: bench/targets.py for the device; --limit sets one)")
    g.add_argument("--limit", action="append", default=[], metavar="METHOD=MAX",
                   help="the largest allowed step time / SGD's for METHOD (repeatable; implies --check)")
    g.add_argument("--against", metavar="REF",
                   help="time the working tree against REF: a git ref (checked out into a temporary "
                        "worktree, removed afterwards) or a rounds-*.csv file of an earlier --against run")
    g.add_argument("--min-change", type=float, default=verdict.MIN_CHANGE,
                   help=f"smallest head/base change called slower or faster (default {verdict.MIN_CHANGE:g})")
    g.add_argument("--alpha", type=float, default=verdict.ALPHA,
                   help=f"significance level of the rank test (default {verdict.ALPHA:g})")
    g.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds of --against's timed rounds (start-up comes on top); sets the number of "
                        f"round pairs (default {DEFAULT_BUDGET_S:g})")
    g.add_argument("--timer", choices=("auto", "wall", "process"), default="auto",
                   help="--against's clock: wall time, or the worker's CPU time (auto: CPU time on the CPU, "
                        "where other jobs' time slices would otherwise be charged to the block they interrupt; "
                        "wall time on a GPU)")
    g.add_argument("--history", metavar="FILE",
                   help="append this run's rows (commit, device, threads, torch, method, step time, ratio) "
                        "to the CSV FILE")


# ---- limits ------------------------------------------------------------------------------------------
def default_limits(device_type: str) -> dict[str, float]:
    """The upper bounds on step time / SGD's that bench.targets sets for this kind of device."""
    targets = CI_LIMITS if device_type == "cpu" else STEP_TARGETS
    return {t.method: t.high for t in targets if t.high is not None and t.device in (None, device_type)}


def parse_limits(specs: Sequence[str], device_type: str) -> dict[str, float]:
    """Default limits updated by `--limit METHOD=MAX` flags; UsageError on the first bad one."""
    limits = default_limits(device_type)
    for spec in specs:
        method, sep, value = spec.partition("=")
        method = method.strip().lower()
        if not sep or method not in METHODS:
            raise UsageError(f"--limit {spec!r} is invalid: expected METHOD=MAX with METHOD one of "
                             f"{', '.join(METHODS)}")
        try:
            high = float(value)
        except ValueError:
            high = math.nan
        if not math.isfinite(high) or high <= 0:
            raise UsageError(f"--limit {spec!r} is invalid: MAX must be a number > 0")
        limits[method] = high
    return limits


def limit_failures(ratios: Mapping[str, tuple[float, float, float]], limits: Mapping[str, float],
                   interval: str) -> list[str]:
    """One line per broken limit; `ratios`: method -> (median, low, high) of the per-round ratio to SGD."""
    return [f"{m}: step time {med:.3f}x SGD ({interval} [{low:.3f}, {high:.3f}]) is over its limit {limits[m]:g}"
            for m, (med, low, high) in ratios.items() if m in limits and med > limits[m]]


def check_rows(rows: Sequence[OverheadRow], limits: Mapping[str, float]) -> list[str]:
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        ratios = {r.method: (r.time_ratio_median, r.time_ratio_q1, r.time_ratio_q3) for r in rows if r.model == model}
        lines += [f"{model} {line}" for line in limit_failures(ratios, limits, "interquartile")]
    return lines


# ---- history -----------------------------------------------------------------------------------------
def append_history(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Add rows to the history CSV (rewritten atomically: a killed run leaves the old file whole)."""
    file = Path(path)
    old = pd.read_csv(file) if file.exists() and file.stat().st_size else pd.DataFrame()
    io.write_csv(file, pd.concat([old, pd.DataFrame(rows)], ignore_index=True))


def history_rows(rows: Sequence[OverheadRow], prov: Mapping[str, str], threads: int) -> list[dict[str, Any]]:
    commit = prov["git_commit"]
    return [{"measured_at": prov["measured_at"], "commit": commit.removesuffix("-dirty"),
             "tree": "dirty" if commit.endswith("-dirty") else "clean", "device_name": prov["device_name"],
             "threads": threads, "torch_version": prov["torch_version"], "model": r.model, "method": r.method,
             "step_ms": r.step_ms_median, "ratio_to_sgd": r.time_ratio_median, "ratio_low": r.time_ratio_q1,
             "ratio_high": r.time_ratio_q3, "interval": "interquartile"} for r in rows]


# ---- --against ---------------------------------------------------------------------------------------
def _rounds_frame(samples: Samples, settings: Mapping[str, Any], commits: Mapping[str, str],
                  prov: Mapping[str, str]) -> pd.DataFrame:
    rows = [{"side": side, "pair": i, "first": samples.order[i], "method": m, "step_s": t,
             "code_commit": commits[side], **{k: settings[k] for k in SETTING_KEYS}, **prov}
            for side in SIDES for m in samples.methods for i, t in enumerate(samples.times[side][m])]
    return pd.DataFrame(rows)


def _text(value: Any) -> str:
    """A setting as a stored CSV cell compares: None and NaN alike empty."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _stored_base(path: Path, settings: Mapping[str, Any], methods: Sequence[str]) -> tuple[dict[str, list[float]], str]:
    """The head samples of an earlier run's rounds file, refused when its settings differ from these."""
    try:
        frame = pd.read_csv(path)
        frame = frame[frame["side"] == "head"]
        stored = frame.iloc[0]
    except (OSError, ValueError, KeyError, IndexError, pd.errors.ParserError) as exc:
        raise UsageError(f"--against {path}: not a rounds file of safbench overhead --against ({exc})") from None
    for key in SETTING_KEYS:
        if key in ("device",):
            continue
        if key not in frame.columns or _text(stored[key]) != _text(settings[key]):
            raise UsageError(f"--against {path}: measured with {key}={stored.get(key)!r}, this run has "
                             f"{settings[key]!r}; pass the same settings")
    missing = [m for m in methods if m not in set(frame["method"])]
    if missing:
        raise UsageError(f"--against {path}: has no rounds of method {missing[0]!r}")
    return {m: frame[frame["method"] == m]["step_s"].tolist() for m in methods}, str(stored["code_commit"])


def format_changes(changes: Sequence[verdict.Change], samples: Samples | None, base: Mapping[str, list[float]],
                   head: Mapping[str, list[float]]) -> str:
    header = ("method", "base ms", "head ms", "head/base", "[95% CI]", "p slower", "x SGD change", "[95% CI]",
              "verdict")
    lines = []
    for c in changes:
        rel = ("-", "") if c.sgd_ratio_change is None else (
            f"{c.sgd_ratio_change:.3f}", f"[{c.sgd_ratio_low:.3f}, {c.sgd_ratio_high:.3f}]")
        lines.append((c.method, f"{1e3 * statistics.median(base[c.method]):.2f}",
                      f"{1e3 * statistics.median(head[c.method]):.2f}", f"{c.ratio:.3f}",
                      f"[{c.low:.3f}, {c.high:.3f}]", f"{c.p_slower:.2g}", *rel, c.verdict))
    return text_table(header, lines, "lrrrrrrrl")


def slower_line(c: verdict.Change, ref: str) -> str:
    """The one line naming a method found slower, with both counts the rule reads."""
    line = (f"{c.method}: slower than {ref}: step time x{c.ratio:.3f} (95% CI [{c.low:.3f}, {c.high:.3f}], "
            f"p = {c.p_slower:.2g})")
    if c.sgd_ratio_change is not None:
        line += (f", ratio to SGD x{c.sgd_ratio_change:.3f} (95% CI [{c.sgd_ratio_low:.3f}, "
                 f"{c.sgd_ratio_high:.3f}], p = {c.p_sgd_ratio_slower:.2g})")
    return line


def run_against(args: argparse.Namespace, settings: dict[str, Any], gated: Sequence[str],
                limits: Mapping[str, float] | None,
                out: Path | None) -> int:
    """Compare, print the table, write the rounds and changes (with --out) and history; the exit status."""
    if args.budget_s <= 0 or not 0 < args.alpha < 1 or args.min_change < 0:
        raise UsageError("--budget-s must be > 0, --alpha in (0, 1) and --min-change >= 0")
    methods = list(settings["methods"])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    device = torch.device(settings["device"])
    torch.set_num_threads(settings["threads"])
    prov = {**provenance(device, args.invocation), "measured_at": stamp}
    start = time.perf_counter()
    stored = Path(args.against)
    if stored.suffix == ".csv" and stored.is_file():
        base, base_commit = _stored_base(stored, settings, methods)
        repo = worktree.repo_root(Path.cwd())
        head_commit = git_commit(repo)
        print(f"head {head_commit[:12]} against the stored rounds of {base_commit[:12]} ({stored})")
        samples = compare({"head": repo}, settings, budget_s=args.budget_s,
                          describe=lambda s: f"the working tree ({head_commit[:12]})")
        head = samples.times["head"]
        changes = verdict.unpaired(base, head, alpha=args.alpha, min_change=args.min_change)
    else:
        repo = worktree.repo_root(Path.cwd())
        base_commit = worktree.resolve(repo, args.against)
        head_commit = git_commit(repo)
        worktree.remove_stale(repo)
        print(f"head {head_commit[:12]} (working tree) against {args.against} = {base_commit[:12]}, "
              f"{settings['model']}, methods {' '.join(methods)}, {settings['threads']} thread(s), "
              f"budget {args.budget_s:g} s")
        with worktree.checkout(repo, base_commit) as base_root:
            samples = compare({"base": base_root, "head": repo}, settings, budget_s=args.budget_s,
                              describe=lambda s: f"REF {args.against} ({base_commit[:12]})" if s == "base"
                              else f"the working tree ({head_commit[:12]})")
        base, head = samples.times["base"], samples.times["head"]
        changes = verdict.paired(base, head, alpha=args.alpha, min_change=args.min_change)
    total_s = time.perf_counter() - start
    print(format_changes(changes, samples, base, head))
    print(f"{samples.pairs} round pairs in {samples.rounds_s:.0f} s (+{samples.setup_s:.0f} s start-up); rule: "
          f"slower when the signed-rank p < {args.alpha:g} and head/base >= {1 + args.min_change:g}, in step time "
          f"or in the ratio to SGD")
    failures = [slower_line(c, args.against) for c in changes if c.verdict == "slower" and c.method in gated]
    head_ratios = {m: verdict.median_interval([h / r for h, r in zip(head[m], head[REFERENCE], strict=True)])
                   for m in methods}  # the head's ratio to SGD per round: median and 95% interval
    if limits is not None:
        failures += limit_failures(head_ratios, limits, "95% CI")
    commits = {"base": base_commit, "head": head_commit}
    change_rows = [{**c.__dict__, "base_commit": base_commit, "head_commit": head_commit, "ref": args.against,
                    "gated": c.method in gated, "pairs": samples.pairs, "setup_s": samples.setup_s,
                    "rounds_s": samples.rounds_s, "total_s": total_s, "min_change": args.min_change,
                    "alpha": args.alpha, **{k: settings[k] for k in SETTING_KEYS}, **prov} for c in changes]
    if out is not None:
        slug = "cpu" if device.type == "cpu" else "cuda"
        if samples.times.get("base") and stored.suffix != ".csv":
            io.write_csv(overhead_csv(out, "rounds", slug, stamp),
                         _rounds_frame(samples, settings, commits, prov))
        io.write_csv(overhead_csv(out, "against", slug, stamp), pd.DataFrame(change_rows))
    if args.history:
        append_history(args.history, [{
            "measured_at": stamp, "commit": head_commit.removesuffix("-dirty"),
            "tree": "dirty" if head_commit.endswith("-dirty") else "clean", "device_name": prov["device_name"],
            "threads": settings["threads"], "torch_version": prov["torch_version"], "model": settings["model"],
            "method": m, "step_ms": 1e3 * statistics.median(head[m]),
            "ratio_to_sgd": head_ratios[m][0], "ratio_low": head_ratios[m][1], "ratio_high": head_ratios[m][2],
            "interval": "ci95", "base_commit": base_commit,
            "head_over_base": c.ratio, "head_over_base_low": c.low, "head_over_base_high": c.high,
            "verdict": c.verdict} for m, c in zip(methods, changes, strict=True)])
    for line in failures:
        print(line, file=sys.stderr)
    return 1 if failures else 0
