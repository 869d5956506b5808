"""A run's checkpoint as one unit across ranks: epoch-stamped per-rank shards, the main file that names
them, the order of writes that keeps a complete previous checkpoint at every moment, and the checks that
refuse to resume from pieces of different checkpoints.

Rank 0 writes checkpoint.pt (model, method, scheduler, RNG, metrics: built by bench.run); a rank > 0
writes only its share of the method's state (the SAF store of its samples) as a shard.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import faultpoints, io
from .damage import load_torch
from .distributed import DistInfo
from .errors import UsageError
from .records import CHECKPOINT, shard_glob, shard_name

# What every checkpoint.pt holds (a resume refuses a file without them as damaged).
MAIN_KEYS = ("epoch", "model", "method", "scheduler", "rng_cpu", "metrics")


def new_checkpoint_id(info: DistInfo, device: torch.device) -> str:
    """Drawn by rank 0 (not from torch's generator: resuming stays bit for bit) and shared with every rank."""
    value = torch.tensor([secrets.randbits(62) if info.is_main else 0], dtype=torch.int64, device=device)
    if info.enabled:
        dist.broadcast(value, 0)
    return f"{int(value.item()):016x}"


def write_checkpoint(run_dir: Path, epoch: int, info: DistInfo, device: torch.device, method_state: Any,
                     main_state: Callable[[str], dict[str, Any]]) -> None:
    """One checkpoint as a unit, whatever the world size. Every rank > 0 writes its epoch-stamped shard
    (checkpoint-rank<r>-e<epoch>.pt) carrying the checkpoint's id; all meet; rank 0 atomically replaces
    checkpoint.pt (`main_state(id)`), which names the id; all meet; only then are older shards removed. A
    crash at any point leaves checkpoint.pt with the shards it names, and a resume checks every shard."""
    ckpt_id = new_checkpoint_id(info, device)
    if info.rank > 0:
        io.save_torch(run_dir / shard_name(info.rank, epoch),
                      {"epoch": epoch, "checkpoint_id": ckpt_id, "rank": info.rank, "method": method_state})
    faultpoints.reached(f"checkpoint-shard-e{epoch}", info.rank)
    if info.enabled:
        dist.barrier()
    faultpoints.reached(f"checkpoint-shards-e{epoch}", info.rank)
    if info.is_main:
        io.save_torch(run_dir / CHECKPOINT, main_state(ckpt_id))
    if info.enabled:
        dist.barrier()
        faultpoints.reached(f"checkpoint-main-e{epoch}", info.rank)
        for old in run_dir.glob(shard_glob(info.rank)):
            if old.name != shard_name(info.rank, epoch):
                old.unlink(missing_ok=True)


def read_checkpoint(path: Path, info: DistInfo, device: torch.device, config_hash: str,
                    identity: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """checkpoint.pt and this rank's method state (its shard's on ranks > 0), once they are known to be of
    this config, of this world size and of one checkpoint; UsageError (one line) otherwise."""
    state = load_torch(path, device, keys=MAIN_KEYS)
    if state.get("config_hash") != config_hash:
        theirs = state.get("identity", {})
        diff = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
        raise UsageError(f"checkpoint {path} is from another config (differs in: {', '.join(diff) or '?'})")
    if state.get("world_size", 1) != info.world_size:
        raise UsageError(f"checkpoint {path} was written with world size {state.get('world_size')}, "
                         f"this run has {info.world_size}")
    method_state = state["method"] if info.rank == 0 else _read_shard(path, state, info, device)
    return state, method_state


def read_model(run_dir: Path, device: torch.device) -> tuple[dict[str, Any], int]:
    """The model's state_dict in the run's checkpoint and the epochs it had trained, for measuring it."""
    state = load_torch(run_dir / CHECKPOINT, device, keys=("model", "epoch"))
    return state["model"], int(state["epoch"])


def _read_shard(path: Path, state: dict[str, Any], info: DistInfo, device: torch.device) -> Any:
    """This rank's shard of the checkpoint: the file checkpoint.pt names, holding its epoch and id."""
    epoch, ckpt_id = int(state["epoch"]), state.get("checkpoint_id")
    shard = path.with_name(shard_name(info.rank, epoch))
    if ckpt_id is None:
        raise UsageError(f"checkpoint {path} (world size {info.world_size}) was written by an older "
                         "safbench without shard ids, so its per-rank shards cannot be checked to be of the "
                         "same epoch; delete the checkpoint files to restart the run")
    if not shard.exists():
        raise UsageError(f"checkpoint {path} (epoch {epoch}) names shard {shard.name}, which is missing: "
                         "the checkpoint is incomplete; delete the checkpoint files to restart the run")
    data = load_torch(shard, device, keys=("epoch", "checkpoint_id", "rank", "method"))
    if (data["epoch"], data["checkpoint_id"], data["rank"]) != (epoch, ckpt_id, info.rank):
        raise UsageError(f"checkpoint shard {shard} (epoch {data['epoch']}, id {data['checkpoint_id']}) does not "
                         f"belong to {path} (epoch {epoch}, id {ckpt_id}); refusing to mix them: delete the "
                         "checkpoint files to restart the run")
    return data["method"]
