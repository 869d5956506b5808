"""`safbench overhead`: the cost of a training step per method, as a table and CSV rows with provenance.

    safbench overhead [--device auto|cpu|cuda] [--shape cifar10|cifar100|imagenet|fashionmnist] [--models M ...]
                      [--methods sgd sam esam saf saf_official mesa] [--batch-size B] [--precision bf16|fp32]
                      [--steps S] [--repeats R] [--warmup W] [--num-samples N] [--out DIR]
                      [--loop] [--store-report] [--no-steps]

Writes <out>/steps-<device>-<UTC time>.csv (and loop-... / store-... for --loop / --store-report),
rewritten atomically after every model so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import io
from ..errors import UsageError
from ..provenance import device_name, provenance
from ..records import overhead_csv
from ..targets import LOOP_TARGET
from . import gate
from .batches import IMAGENET_SAMPLES, SHAPES
from .config import PRECISIONS, OverheadConfig
from .loop import measure_loop
from .methods import METHODS, REFERENCE
from .rows import LoopRow, OverheadRow, StoreRow, records
from .rows import text_table as _table
from .steps import measure_steps
from .store import store_report

DEFAULT_MODELS = {
    ("cuda", "cifar"): ("resnet18", "wrn28_10", "pyramidnet110"),
    ("cpu", "cifar"): ("cnn_small",),  # the CIFAR nets take seconds per step on a few CPU cores
    ("cuda", "imagenet"): ("timm:resnet50", "timm:vit_small_patch32_224"),
    ("cpu", "imagenet"): ("timm:resnet50", "timm:vit_small_patch32_224"),
}
LOOP_METHODS = ("sgd", "saf")  # the loop's overhead is the same for every method; SGD shows it largest
CPU_STORE_SAMPLES = 20_000
CPU_IMAGENET_SAMPLES = 50_000  # a CPU run cannot hold (or usefully sweep) the ImageNet-size store


@dataclass(frozen=True)
class Defaults:
    """What a flag left out means on this device and shape (a GPU measures the paper's settings)."""

    models: tuple[str, ...]
    batch_size: int
    precision: str
    steps: int
    repeats: int
    warmup: int
    num_samples: int | None
    loop_samples: int
    store_samples: int

    @classmethod
    def for_(cls, device: torch.device, shape: str) -> Defaults:
        gpu, imagenet = device.type == "cuda", shape == "imagenet"
        family = "imagenet" if imagenet else "cifar"
        return cls(
            models=DEFAULT_MODELS[(device.type, family)],
            batch_size=(256 if gpu else 8) if imagenet else (128 if gpu else 64),
            precision="bf16" if gpu else "fp32",
            steps=10 if gpu else (1 if imagenet else 3),
            repeats=20 if gpu else (5 if imagenet else 15),
            warmup=10 if gpu else 2,
            num_samples=CPU_IMAGENET_SAMPLES if imagenet and not gpu else None,
            loop_samples=(10_000 if gpu else 256) if imagenet else (50_000 if gpu else 10_000),
            store_samples=IMAGENET_SAMPLES if gpu else CPU_STORE_SAMPLES,
        )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "overhead", help="time every method's training step on the same model and batch (ratios to SGD)",
        description="Steady-state step time of every method, interleaved round-robin in one process; "
                    "median and spread of images/s, ratio to SGD, memory, SAF store / MESA EMA bytes.")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--shape", choices=tuple(SHAPES), default="cifar10",
                   help="cifar10/cifar100: 3x32x32 with 10/100 classes; imagenet: 3x224x224, 1000 classes; "
                        "fashionmnist: 1x28x28, 10 classes")
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="default: resnet18 wrn28_10 pyramidnet110 (CIFAR on a GPU), cnn_small (CIFAR on the "
                        "CPU), timm:resnet50 timm:vit_small_patch32_224 (imagenet)")
    p.add_argument("--methods", nargs="+", metavar="METHOD", help=f"default: {' '.join(METHODS)}")
    p.add_argument("--batch-size", type=int, help="per device; default 128 (CIFAR) / 256 (ImageNet) on a GPU")
    p.add_argument("--precision", choices=PRECISIONS, help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--steps", type=int, help="steps per timed block (default 10 on a GPU, 3 on the CPU)")
    p.add_argument("--repeats", type=int, help="interleaved rounds (default 20 on a GPU, 15 on the CPU)")
    p.add_argument("--warmup", type=int,
                   help="untimed steps per method first (default 10 on a GPU, 2 on the CPU)")
    p.add_argument("--num-samples", type=int, metavar="N",
                   help="dataset size SAF's store is sized for and its indices sweep (default 50,000 for "
                        f"CIFAR shapes; imagenet: {IMAGENET_SAMPLES:,} on a GPU, {CPU_IMAGENET_SAMPLES:,} "
                        "on the CPU)")
    p.add_argument("--optimizer", choices=("auto", "sgd", "adamw"), default="auto",
                   help="base optimizer (auto: AdamW for ViTs, SGD otherwise)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for CUDA, as in training runs")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model (compiled during warm-up)")
    p.add_argument("--threads", type=int,
                   help="CPU intra-op threads (default: torch's). On a shared machine 1 keeps the ratios those "
                        "of the work: with more, every op waits at a barrier for its slowest thread")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="folder for the CSV files (default results/overhead; with --against or --check, "
                        "no files unless given)")
    p.add_argument("--no-steps", dest="step_table", action="store_false",
                   help="skip the per-method step table")
    p.add_argument("--loop", action="store_true",
                   help="also compare step-only images/s with bench/run.py's real epoch loop")
    p.add_argument("--loop-samples", type=int, metavar="N",
                   help="training samples of the loop's resident data")
    p.add_argument("--store-report", action="store_true",
                   help="also report the ImageNet-1k SAF store: sizes, measured exchange cost, "
                        "fp16/bf16 error")
    p.add_argument("--store-samples", type=int, metavar="N",
                   help=f"store size for the measured exchange (default {IMAGENET_SAMPLES:,} on a GPU, "
                        f"{CPU_STORE_SAMPLES:,} on the CPU; scaled to fit)")
    p.add_argument("--store-batch-size", type=int, default=256,
                   help="per-GPU batch of the exchange (default 256)")
    p.add_argument("--world-size", type=int, default=8,
                   help="ranks per node for the store sizes (default 8)")
    gate.add_flags(p)
    p.set_defaults(func=_overhead)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda' is invalid here: no CUDA device is visible; allowed: cpu, auto")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _positive(name: str, value: int | None, low: int = 1) -> None:
    if value is not None and value < low:
        raise UsageError(f"--{name}={value} is invalid: allowed values are integers >= {low}")


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def _prepare_out(out: str) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"output folder {path} is not writable ({exc.strerror})") from None
    return path


def _overhead(args: argparse.Namespace) -> int:
    device = _device(args.device)
    d = Defaults.for_(device, args.shape)
    for name in ("batch_size", "steps", "repeats", "num_samples", "loop_samples", "store_samples",
                 "store_batch_size", "world_size", "threads"):
        _positive(name.replace("_", "-"), getattr(args, name))
    _positive("warmup", args.warmup, 0)
    methods = tuple(args.methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"method {unknown[0]!r} is unknown: allowed methods are {', '.join(METHODS)}")
    notes: list[str] = []
    if REFERENCE not in methods:
        methods = (REFERENCE, *methods)
        notes.append(f"{REFERENCE} added: every ratio is taken against it")
    num_samples = args.num_samples or d.num_samples
    if args.num_samples is None and d.num_samples is not None:
        notes.append(f"CPU: N = {d.num_samples:,} instead of ImageNet's {IMAGENET_SAMPLES:,} (--num-samples)")
    configs = [OverheadConfig(
        model=model, device=device, shape=args.shape, methods=methods,
        batch_size=args.batch_size or d.batch_size, precision=args.precision or d.precision,
        steps=args.steps or d.steps, repeats=args.repeats or d.repeats,
        warmup=d.warmup if args.warmup is None else args.warmup, num_samples=num_samples, seed=args.seed,
        channels_last=device.type == "cuda" if args.channels_last is None else args.channels_last,
        compile=args.compile, optimizer=args.optimizer) for model in (args.models or d.models)]
    for config in configs:
        config.validate()
    limits = gate.parse_limits(args.limit, device.type) if args.check or args.limit else None
    judged = args.against is not None or limits is not None
    out = _prepare_out(args.out or "results/overhead") if args.out or not judged or args.loop or \
        args.store_report else None
    if args.against is not None:
        if len(configs) > 1:
            raise UsageError("--against compares one model: pass one --models")
        c = configs[0]
        settings = {**{k: getattr(c, k) for k in gate.SETTING_KEYS if k not in ("threads", "device", "timer")},
                    "methods": list(c.methods), "threads": args.threads or (1 if device.type == "cpu" else
                                                                             torch.get_num_threads()),
                    "device": str(device),
                    "timer": ("process" if device.type == "cpu" else "wall") if args.timer == "auto" else args.timer}
        if device.type == "cpu":  # both workers on the same cores (one at a time runs)
            settings["cpus"] = sorted(os.sched_getaffinity(0))[: settings["threads"]]
        return gate.run_against(args, settings, tuple(args.methods or c.methods), limits, out)
    if args.threads:
        torch.set_num_threads(args.threads)  # before provenance: device_name records the thread count
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    prov = {**provenance(device, args.invocation), "measured_at": stamp}
    print(f"safbench overhead on {prov['device_name']} "
          f"(torch {prov['torch_version']}, commit {prov['git_commit']})")
    for note in notes:
        print(f"note: {note}")

    failures: list[str] = []
    if args.step_table or limits is not None:
        path = overhead_csv(out, "steps", device_slug(device), stamp) if out else None
        rows = []
        for config in configs:
            rows += measure_steps(config, notes=notes, progress=True)
            if path:
                io.write_csv(path, pd.DataFrame(records(rows, prov)))  # after every model: keep what is measured
        print(format_steps(rows))
        if path:
            print(f"wrote {path}")
        if limits is not None:
            failures = gate.check_rows(rows, limits)
        if args.history:
            gate.append_history(args.history, gate.history_rows(rows, prov, torch.get_num_threads()))
    if args.loop:
        path, loop_rows = overhead_csv(out, "loop", device_slug(device), stamp), []
        loop_methods = tuple(args.methods) if args.methods else LOOP_METHODS
        for config in configs:
            config = dataclasses.replace(config, methods=loop_methods)
            loop_rows += measure_loop(config, num_train=args.loop_samples or d.loop_samples, progress=True)
            io.write_csv(path, pd.DataFrame(records(loop_rows, prov)))
        print(format_loop(loop_rows))
        print(f"wrote {path}")
    if args.store_report:
        path = overhead_csv(out, "store", device_slug(device), stamp)
        store_rows = store_report(device, num_samples=args.store_samples or d.store_samples,
                                  batch_size=args.store_batch_size, world_size=args.world_size,
                                  seed=args.seed, progress=True)
        io.write_csv(path, pd.DataFrame(records(store_rows, prov)))
        print(format_store(store_rows))
        print(f"wrote {path}")
    for line in failures:
        print(line, file=sys.stderr)
    return 1 if failures else 0


# ---- tables ----------------------------------------------------------------------------------------
def _gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"




def format_steps(rows: Sequence[OverheadRow]) -> str:
    header = ("model", "method", "images/s", "[q1, q3]", "step ms", "time x SGD", "[q1, q3]", "% SGD img/s",
              "peak mem", "store / EMA")
    lines = [(r.model, r.method, f"{r.images_per_s_median:.1f}",
              f"[{r.images_per_s_q1:.1f}, {r.images_per_s_q3:.1f}]", f"{r.step_ms_median:.2f}",
              f"{r.time_ratio_median:.3f}", f"[{r.time_ratio_q1:.3f}, {r.time_ratio_q3:.3f}]",
              f"{100 * r.throughput_ratio_median:.1f}%", _gb(r.peak_mem_bytes),
              _gb(r.saf_store_bytes if r.saf_store_bytes is not None else r.mesa_ema_bytes)) for r in rows]
    table = _table(header, lines, "llrrrrrrrr")
    notes = sorted({r.note for r in rows if r.note})
    first = rows[0] if rows else None
    about = (f"\n{first.shape} {first.image_shape}, batch {first.batch_size}, {first.precision}, "
             f"{first.rounds} rounds x {first.steps_per_block} steps, N = {first.num_samples:,}, "
             f"timer {first.timer}") if first else ""
    return table + about + "".join(f"\nnote: {n}" for n in notes)


def format_loop(rows: Sequence[LoopRow]) -> str:
    header = ("model", "method", "step-only img/s", "real loop img/s", "loop / step", "[q1, q3]")
    lines = [(r.model, r.method, f"{r.step_images_per_s_median:.1f}", f"{r.loop_images_per_s_median:.1f}",
              f"{r.loop_ratio_median:.3f}", f"[{r.loop_ratio_q1:.3f}, {r.loop_ratio_q3:.3f}]") for r in rows]
    return _table(header, lines, "llrrrr") + f"\ntarget: loop / step >= {LOOP_TARGET:g}"


def format_store(rows: Sequence[StoreRow]) -> str:
    sizes = [r for r in rows if r.section == "size"]
    exchange = [r for r in rows if r.section == "exchange"]
    errors = [r for r in rows if r.section == "dtype_error"]
    parts = []
    if sizes:
        s = sizes[0]
        parts.append(f"SAF store for N = {s.num_samples:,}, C = {s.num_classes}, e_tilde = {s.e_tilde}:\n"
                     + _table(("design", "dtype", "ranks", "logits / rank", "allocated / rank", "per node",
                               "where"),
                              [(r.design, r.dtype, str(r.world_size), _gb(r.logit_bytes_per_rank),
                                _gb(r.bytes_per_rank), _gb(r.bytes_per_node), r.location or "") for r in sizes],
                              "llrrrrl")
                     + "\n(allocated: ours adds an int16 per row and slot, the epoch that wrote it)")
    if exchange:
        e = exchange[0]
        parts.append(f"store exchange (read + write) per step, batch {e.batch_size}, N = {e.num_samples:,}:\n"
                     + _table(("design", "dtype", "ms / step", "[q1, q3]", "bytes moved", "where"),
                              [(r.design, r.dtype, f"{r.exchange_ms_median:.3f}",
                                f"[{r.exchange_ms_q1:.3f}, {r.exchange_ms_q3:.3f}]",
                                _gb(r.bytes_moved_per_step), r.location or "") for r in exchange], "llrrrl"))
    if errors:
        parts.append("trajectory loss, store dtype vs float32 store (relative change; target < 1e-3):\n"
                     + _table(("logits", "dtype", "loss (fp32 store)", "rel. change"),
                              [(r.logits_case or "", r.dtype, f"{r.trajectory_loss_fp32_store:.4f}",
                                f"{r.rel_loss_error:.2e}") for r in errors], "llrr"))
    return "\n\n".join(parts)
