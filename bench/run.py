"""One timed, resumable training run: config in, run directory out.

<out>/<dataset>-<model>-<method>-s<seed>-<hash>/
    config.yaml     the fully resolved config
    metrics.csv     one row per epoch
    checkpoint.pt   the last finished epoch (torch.load(weights_only=True) reads it)
    summary.json    written once the run ends: finished, diverged or failed

Training time is measured between device synchronisations around the epoch's steps only
(evaluation and file writes excluded); epoch 0 includes warm-up and is reported apart.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

import optimizers

from . import faultpoints, io, lifeline
from .checkpoint import read_checkpoint, write_checkpoint
from .config import RunConfig
from .damage import check_run_dir
from .data import create_data
from .distributed import DistInfo, all_reduce_sum, init_from_env
from .errors import UsageError
from .loop import FIT_COLUMNS, TrainLoop
from .models import count_parameters, create_model
from .plugins import EpochView, run_hooks
from .provenance import provenance
from .records import CHECKPOINT, METRICS, MetricsRow, Summary, fields_of
from .rundir import config_summary, read_summary, write_config, write_metrics, write_summary
from .schedules import base_optimizer, lr_range, lr_scheduler
from .sharpness import adaptive_sharpness, sam_sharpness
from .tensorboard_log import TensorBoardLog
from .tuning import val_readout

# Set by a grid process for the torchrun it starts: the path of the cell lock it holds on the run's behalf.
LOCK_HELD_ENV = "SAFBENCH_LOCK_HELD"


def resolve_device(config: RunConfig, info: DistInfo | None = None) -> torch.device:
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", info.local_rank if info else 0)


def closest_runs(out: Path, name: str, limit: int = 3) -> str:
    """Run directories under `out` most like `name` (same dataset-model-method-seed first), for error messages."""
    import difflib

    prefix = name.rsplit("-", 1)[0]
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if out.is_dir() else []
    same = [n for n in names if n.startswith(prefix + "-")]
    others = difflib.get_close_matches(name, [n for n in names if n not in same], n=limit, cutoff=0.0)
    return ", ".join((same + others)[:limit]) or "none"


def _host_rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_mem_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's peak RSS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


METRICS_FIELDS = fields_of(MetricsRow)


class Run:
    """Sets a run up from a validated config; `train()` runs the epochs and writes the run directory."""

    def __init__(self, config: RunConfig, *, resume: bool = False, command: str | None = None,
                 locked: bool = False) -> None:
        """`locked`: the caller holds the run's lock (a grid cell); otherwise the run takes it itself."""
        lifeline.hold()  # a grid cell's torchrun worker stops when the grid or torchrun ends (bench.lifeline)
        self.resume = resume
        self.locked = locked
        self._lock: Any = None
        self.info = init_from_env("cuda" if resolve_device(config).type == "cuda" else "cpu")
        self.device = resolve_device(config, self.info)
        # The name (hash) is the requested config's; config.yaml records the values actually used.
        self.config_hash = config.config_hash()
        self.run_name = config.run_name()
        self.config = config.resolved(self.device.type)
        self.precision = self.config.precision
        self.run_dir = Path(self.config.out) / self.run_name
        self.command = command
        self.hooks = run_hooks(self.config)
        if (self.config.hessian or self.config.hessian_epochs) and "hessian" not in self.hooks:
            raise UsageError("--hessian needs the Hessian run hook of safbench's analysis package (entry point "
                             "safbench.run_hooks), which is not installed: pip install -e . in the checkout")
        io.check_writable(self.config.out)
        # Everything that can reject user input happens before the run directory is created.
        self.data = create_data(
            self.config.dataset, root=self.config.data_root, batch_size=self.config.batch_size,
            device=self.device, seed=self.config.seed, train_subset=self.config.train_subset,
            download=self.config.download, rank=self.info.rank, world_size=self.info.world_size,
            num_workers=self.config.num_workers, eval_batch_size=self.config.eval_batch_size,
            channels_last=self.config.channels_last, label_noise=self.config.label_noise,
            label_noise_seed=self.config.label_noise_draw(),
            val_size=self.config.val_size, val_split_seed=self.config.val_split_seed,
            **({} if self.config.augment else {"augment": False}))
        torch.manual_seed(self.config.seed)  # identical initial weights on every rank and every resume
        net = create_model(self.config.model, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                           img_size=self.data.img_size).to(self.device)
        if self.config.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.num_params = count_parameters(net)
        model: nn.Module = net
        if self.info.enabled:
            model = nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.config.compile:
            model = torch.compile(model)
        self.model = model
        self.optimizer = base_optimizer(self.config, net)
        self.scheduler = lr_scheduler(self.config, self.optimizer, self.data.steps_per_epoch)
        self.method = optimizers.create(
            self.config.method, model, self.optimizer, label_smoothing=self.config.label_smoothing,
            precision=self.precision, bn_update=self.config.bn_update,
            **self.config.method_kwargs(num_samples=self.data.num_samples, num_classes=self.data.num_classes,
                                        lr_range=lr_range(self.config)))
        self.flipped = getattr(self.data, "flipped", None)  # label noise: which samples' labels were flipped
        self.sharpness_batches = self._sharpness_batches() if self.config.sharpness else None
        self.tensorboard = TensorBoardLog(self.run_dir) if self.config.tensorboard and self.info.is_main else None
        self.rows: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.saved_epochs = 0  # epochs in the checkpoint on disk: all a failed run can claim
        self.elapsed_s = 0.0
        self._prepare_run_dir()

    def _sharpness_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first `sharpness_samples` training samples (labels as trained on), un-augmented, seed-0 order,
        in batches of the training batch size: the same for every method, seed and epoch."""
        fixed = create_data(self.config.dataset, root=self.config.data_root, batch_size=self.config.batch_size,
                            device=self.device, seed=0, train_subset=self.config.train_subset, num_workers=0,
                            channels_last=self.config.channels_last, label_noise=self.config.label_noise,
                            label_noise_seed=self.config.label_noise_draw(),
                            val_size=self.config.val_size, val_split_seed=self.config.val_split_seed,
                            augment=False)
        batches, seen = [], 0
        for _, inputs, targets in fixed.train_batches(0):
            batches.append((inputs, targets))
            seen += targets.shape[0]
            if seen >= self.config.sharpness_samples:
                break
        return batches

    # ---- run directory ---------------------------------------------------------------------------
    def _take_lock(self) -> None:
        """The grid's cell lock on this run directory, so that two processes never train one run; then
        the temporary files a killed writer left are removed (safe only under the lock)."""
        from .cells import CellLock, lock_holder, lock_path, remove_leftovers

        path = lock_path(self.run_dir)
        ok = True
        held = os.environ.get(LOCK_HELD_ENV)
        if self.info.is_main and not self.locked and not (held and os.path.realpath(held) == os.path.realpath(path)):
            self._lock = CellLock(path)
            ok = self._lock.acquire(wait_s=0)
        if self.info.enabled:  # every rank learns whether rank 0 got it
            ok = bool(all_reduce_sum(torch.tensor([0.0 if ok else 1.0], device=self.device), self.info).item() == 0)
        if not ok:
            raise UsageError(f"run directory {self.run_dir} is in use by another process "
                             f"({lock_holder(path) or 'lock ' + str(path)}); wait for it to end, or stop it first")
        if self.info.is_main:
            remove_leftovers(self.run_dir)
        if self.info.enabled:
            dist.barrier()

    def release(self) -> None:
        """Drop the run's lock (train() does this when it returns or raises)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def __del__(self) -> None:  # a Run made but never trained (tests, tools) must not keep its lock
        self.release()

    def _prepare_run_dir(self) -> None:
        self._take_lock()
        try:
            self._prepare_locked_run_dir()
        except BaseException:
            self.release()
            raise

    def _prepare_locked_run_dir(self) -> None:
        checkpoint = self.run_dir / CHECKPOINT
        taken = self.run_dir.exists() and any(self.run_dir.iterdir())
        if self.info.enabled:
            dist.barrier()  # every rank looks before rank 0 writes config.yaml, so all agree on `taken`
        if self.resume and not taken:
            raise UsageError(f"--resume: no run with this config under {self.config.out} "
                             f"({self.run_name}); closest there: {closest_runs(Path(self.config.out), self.run_name)}")
        if taken and not self.resume:
            raise UsageError(f"run directory {self.run_dir} already exists: pass --resume to continue it, "
                             "or choose another --out")
        if self.resume and taken:
            check_run_dir(self.run_dir)  # a damaged file: one line saying what to do, and nothing written
        if self.resume and checkpoint.exists():
            refused: UsageError | None = None
            try:
                self._load_checkpoint(checkpoint)
            except UsageError as exc:
                refused = exc
            if self.info.enabled:  # every rank stops if one refuses its shard: none trains on alone
                flags = torch.zeros(self.info.world_size, device=self.device)
                flags[self.info.rank] = 1.0 if refused else 0.0
                bad = [r for r, f in enumerate(all_reduce_sum(flags, self.info).tolist()) if f]
                if bad and refused is None:
                    refused = UsageError(f"checkpoint {checkpoint} was refused by rank {bad[0]} (its line says why)")
            if refused is not None:
                raise refused
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir, self.config.to_dict())

    def _load_checkpoint(self, path: Path) -> None:
        state, method_state = read_checkpoint(path, self.info, self.device, self.config_hash, self.config.identity())
        self.net.load_state_dict(state["model"])
        self.method.load_state_dict(method_state)
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)
        self.rows = list(state["metrics"])
        self.start_epoch = self.saved_epochs = int(state["epoch"])
        self.elapsed_s = float(state["elapsed_s"])

    def _save_checkpoint(self, epoch: int) -> None:
        try:
            self._write_checkpoint(epoch)
        except io.WriteFailed as exc:
            done = f"from epoch {self.saved_epochs}" if self.saved_epochs else "from epoch 0"
            failed = io.WriteFailed(f"{exc}; free space or make the folder writable (or copy the run directory "
                                    f"elsewhere and use that --out), then run --resume to continue {done}")
            failed.errno = exc.errno
            raise failed from exc
        self.saved_epochs = epoch

    def _write_checkpoint(self, epoch: int) -> None:
        method_state = self.method.state_dict()
        write_checkpoint(self.run_dir, epoch, self.info, self.device, method_state,
                         lambda ckpt_id: self._main_checkpoint(epoch, ckpt_id, method_state))

    def _main_checkpoint(self, epoch: int, ckpt_id: str, method_state: Any) -> dict[str, Any]:
        state = {"epoch": epoch, "checkpoint_id": ckpt_id, "model": self.net.state_dict(),
                 "method": method_state, "scheduler": self.scheduler.state_dict(),
                 "rng_cpu": torch.get_rng_state(), "config_hash": self.config_hash,
                 "identity": self.config.identity(), "world_size": self.info.world_size, "metrics": self.rows,
                 "elapsed_s": self.elapsed_s}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    # ---- training --------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        try:
            return self._train()
        finally:
            self.release()

    def _train(self) -> dict[str, Any]:
        if self.resume and (summary := read_summary(self.run_dir)) and summary.get("status") == "finished":
            if self.info.is_main and self.rows and not (self.run_dir / METRICS).exists():
                write_metrics(self.run_dir, self.rows)  # deleted: rebuilt from the checkpoint
            return summary
        status, error = "finished", None
        try:
            for epoch in range(self.start_epoch, self.config.epochs):
                faultpoints.reached(f"epoch-{epoch}", self.info.rank)
                row = self._epoch(epoch)
                self.rows.append(row)
                if not math.isfinite(row["train_loss"]):
                    status = "diverged"
                    break
                self._call_hooks(epoch)
                if self.info.enabled:
                    torch.distributed.barrier()
                self._save_checkpoint(epoch + 1)
                faultpoints.reached(f"after-checkpoint-e{epoch + 1}", self.info.rank)
                if self.info.is_main:
                    write_metrics(self.run_dir, self.rows)
                    if self.tensorboard is not None:
                        self.tensorboard.log(row)
                    print(self._epoch_line(row), flush=True)
            if status == "finished":
                self._call_hooks(None)
        except (KeyboardInterrupt, SystemExit):
            raise  # interrupted: the checkpoint stays, the run resumes later
        except Exception as exc:  # noqa: BLE001 - recorded in the summary, then re-raised
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            try:
                self._write_summary(status, error)
            except OSError:
                pass  # e.g. the same full disk: the error the user sees is the first one
            raise
        if self.info.is_main:
            write_metrics(self.run_dir, self.rows)
        faultpoints.reached("before-summary", self.info.rank)  # metrics.csv complete, summary.json not yet
        if self.tensorboard is not None:
            self.tensorboard.close()
        return self._write_summary(status, error)

    def _epoch(self, epoch: int) -> dict[str, Any]:
        loop = TrainLoop(self.method, self.scheduler, self.flipped, getattr(self.data, "true_targets", None))
        loop.begin_epoch(epoch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        show = self.config.progress and self.info.is_main and sys.stderr.isatty()
        bar = tqdm(total=self.data.steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=not show)
        wall_start = time.perf_counter()
        _sync(self.device)
        start = time.perf_counter()
        loop.run(self.data.train_batches(epoch), after_step=bar.update)
        _sync(self.device)
        train_time = time.perf_counter() - start
        bar.close()
        seen = torch.tensor(float(loop.seen), device=self.device, dtype=torch.float64)
        totals = all_reduce_sum(torch.cat([torch.stack([loop.loss_sum.double(), loop.correct.double(), seen]),
                                           loop.fit.double()]), self.info).tolist()
        (train_loss, train_correct, train_seen), fit = totals[:3], totals[3:]
        test_loss, test_acc = self.evaluate(self.data.test_batches())
        val = dict(zip(("val_loss", "val_acc"), self.evaluate(self.data.val_batches()), strict=True)) \
            if self.config.val_size else {}
        self.elapsed_s += time.perf_counter() - wall_start
        row = {"epoch": epoch, "train_loss": train_loss / train_seen, "train_acc": train_correct / train_seen,
               "test_loss": test_loss, "test_acc": test_acc, **val, "lr": self.optimizer.param_groups[0]["lr"],
               "epoch_time_s": train_time, "images_per_s": train_seen / train_time,
               "peak_mem_bytes": _peak_mem_bytes(self.device), "host_rss_bytes": _host_rss_bytes(),
               "data_resident_bytes": self.data.resident_bytes}
        if fit:  # label noise: the fits to clean and flipped labels (bench.loop.TrainLoop)
            row.update(zip(FIT_COLUMNS, (fit[1] / max(fit[0], 1), fit[3] / max(fit[2], 1),
                                         fit[4] / max(fit[2], 1)), strict=True))
        row.update(self.method.extra_metrics())
        if self.sharpness_batches is not None:
            start = time.perf_counter()
            row["sharpness"] = sam_sharpness(self.net, self.sharpness_batches, self.config.sharpness_rho)
            row["sharpness_time_s"] = time.perf_counter() - start
            start = time.perf_counter()
            row["adaptive_sharpness"] = adaptive_sharpness(self.net, self.sharpness_batches,
                                                           self.config.adaptive_sharpness_rho)
            row["adaptive_sharpness_time_s"] = time.perf_counter() - start
        return row

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        """(mean loss, accuracy) over `batches`, this rank's share, summed over ranks."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        count = 0
        for inputs, targets in batches:
            with self.method.autocast():
                logits = self.net(inputs)
            loss_sum += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").double()
            correct += (logits.argmax(1) == targets).sum()
            count += targets.shape[0]
        self.model.train()
        # Each rank evaluated its own share of the test set: sum the shares (one sync per evaluation).
        totals = torch.stack([loss_sum, correct.double(), torch.tensor(count, dtype=torch.float64,
                                                                       device=self.device)])
        loss_total, correct_total, count_total = all_reduce_sum(totals, self.info).tolist()
        return loss_total / max(count_total, 1), correct_total / max(count_total, 1)

    def _call_hooks(self, epoch: int | None) -> None:
        """The plugged-in hooks (bench.plugins: the Hessian at chosen epochs and at the end), on the main rank."""
        if not self.info.is_main:
            return
        view = EpochView(self.config, self.net, self.device, self.run_dir, epoch)
        for hook in self.hooks.values():
            hook(view)
        self.net.train()

    @staticmethod
    def _epoch_line(row: dict[str, Any]) -> str:
        return (f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
                f"{row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f} s")

    def _write_summary(self, status: str, error: str | None) -> dict[str, Any]:
        # A failed run claims only what its checkpoint holds (an epoch trained but not saved is lost).
        rows = self.rows[:self.saved_epochs] if status == "failed" else self.rows
        speeds = [r["images_per_s"] for r in rows[1:]] or [r["images_per_s"] for r in rows]
        finite = [r for r in rows if math.isfinite(r["train_loss"])]
        last = rows[-1] if rows else {}
        summary: Summary = {
            **config_summary(self.config, self.config_hash, self.run_dir),
            "epochs_completed": len(rows), "status": status, "error": error,
            "final_test_acc": finite[-1]["test_acc"] if finite else None,
            "best_test_acc": max((r["test_acc"] for r in finite), default=None),
            "final_train_loss": finite[-1]["train_loss"] if finite else None,
            "final_test_loss": finite[-1]["test_loss"] if finite else None,
            "final_train_acc": finite[-1]["train_acc"] if finite else None,
            "final_sharpness": finite[-1].get("sharpness") if finite else None,
            "final_adaptive_sharpness": finite[-1].get("adaptive_sharpness") if finite else None,
            **val_readout(finite),
            "images_per_s": statistics.median(speeds) if speeds else None,
            "images_per_s_warmup": rows[0]["images_per_s"] if rows else None,
            "train_time_s": sum(r["epoch_time_s"] for r in rows),
            "wall_s": self.elapsed_s,
            "peak_mem_bytes": max((r["peak_mem_bytes"] for r in rows), default=_peak_mem_bytes(self.device)),
            "label_noise_flipped": getattr(self.data, "label_noise_flipped", 0),
            "world_size": self.info.world_size, "precision": self.precision,
            "num_samples": self.data.num_samples, "num_params": self.num_params,
            "extras": {k: v for k, v in last.items() if k not in METRICS_FIELDS},  # the method's own numbers
            **provenance(self.device, self.command, self.config.method),
        }
        if self.info.is_main:
            write_summary(self.run_dir, summary)
        return summary


def run(config: RunConfig, *, resume: bool = False, command: str | None = None,
        locked: bool = False) -> dict[str, Any]:
    """Train one config to the end (or resume it) and return its summary.

    The run takes its lock (bench.cells) unless `locked` says the caller holds it already."""
    return Run(config, resume=resume, command=command, locked=locked).train()
