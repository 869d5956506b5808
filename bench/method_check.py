"""`safbench check-method NAME`: the conformance check of any registered method (built-in or plugin).

It runs optimizers.testing's checks on a tiny CPU model, the 2-process DDP checks of optimizers.testing_ddp
(unless --no-ddp), and, for a method whose spec needs the schedule's lr range (GSAM), one check that needs the
run's own code: under every schedule, with and without warm-up, the (lr_max, lr_min) a run hands the method
are the highest lr its scheduler really sets and the lowest after warm-up. Each failure is one line; exit 1 if
any check fails, 2 for an unknown method.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

import optimizers

from . import schedules
from .config import SCHEDULES, RunConfig
from .errors import UsageError

STEPS_PER_EPOCH, EPOCHS, LR = 5, 6, 0.1
SCHEDULE_CASES = {"cosine": {}, "constant": {}, "step": {"lr_milestones": [2, 4], "lr_gamma": 0.1}}


def lr_range_problems(name: str) -> list[str]:
    """Where the lr range a run gives the method differs from the range its scheduler sets after warm-up."""
    if not optimizers.method_spec(name).needs_lr_range:
        return []
    failures = []
    for schedule in SCHEDULES:
        for warmup in (0, 2):
            config = RunConfig(method=name, schedule=schedule, warmup_epochs=warmup, epochs=EPOCHS, lr=LR,
                               **SCHEDULE_CASES.get(schedule, {}))
            lrs = _scheduled_lrs(config)
            after = lrs[warmup * STEPS_PER_EPOCH:]  # the peak may be the warm-up's last step; the floor is after it
            given = config.method_kwargs(num_samples=1, num_classes=1, lr_range=schedules.lr_range(config))
            # The cosine's last step sits (1 - cos(pi/T)) / 2 of the lr above its floor, which the range names.
            slack = LR * 0.5 * (1 - math.cos(math.pi / len(after))) if schedule == "cosine" else 0.0
            for key, true, tol in (("lr_max", max(lrs), 0.0), ("lr_min", min(after), slack)):
                if not abs(given[key] - true) <= tol + 1e-12 * LR:
                    failures.append(f"lr range: schedule={schedule}, warmup_epochs={warmup}: the method gets "
                                    f"{key}={given[key]:.6g}, the scheduler's is {true:.6g} (tolerance {tol:.3g})")
    return failures


def _scheduled_lrs(config: RunConfig) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = schedules.lr_scheduler(config, opt, STEPS_PER_EPOCH)
    lrs = []
    for _ in range(config.epochs * STEPS_PER_EPOCH):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def check(name: str, *, ddp: bool = True) -> dict[str, list[str]]:
    from optimizers.testing import conformance

    results = conformance(name)
    results["lr range"] = lr_range_problems(name)
    if ddp:
        from optimizers.testing_ddp import ddp_conformance

        results["ddp"] = ddp_conformance([name]).get(name, ["ddp: no result from the workers"])
    return results


def _run(args: argparse.Namespace) -> int:
    if args.method not in optimizers.methods():
        raise UsageError(f"method {args.method!r} is unknown: allowed methods are {', '.join(optimizers.methods())}")
    origin = optimizers.method_origin(args.method)
    where = f" ({origin['method_distribution']} {origin['method_version']})" if origin else ""
    print(f"check-method {args.method}{where}")
    torch.set_num_threads(1)
    results = check(args.method, ddp=not args.no_ddp)
    for name, failures in results.items():
        print(f"  {'ok  ' if not failures else 'FAIL'} {name}")
        for line in failures:
            print(f"       {line}")
    print("  note float64 reference: not compared here; pass one written from the method's formula to "
          "optimizers.testing.check_method(name, reference=...) in a test")
    failed = sum(bool(f) for f in results.values())
    print(f"{args.method}: {'passes' if not failed else f'fails {failed} of {len(results)} checks'}")
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("check-method", help="conformance check of a method (built-in or plugin), CPU, seconds")
    p.add_argument("method", help="a registered method name")
    p.add_argument("--no-ddp", action="store_true", help="skip the 2-process gloo checks")
    p.set_defaults(func=_run)
