"""The DDP part of the conformance check: a 2-process gloo group on the CPU, one group for many methods.

For each method (the tiny setup of optimizers.testing, each rank on its half of every batch, the replicas
started from different weights so that DDP's broadcast is exercised):
- after every step both workers hold identical weights (tolerance 0);
- under fp16, when only rank 1 meets inf in the first gradient pass of a step (at every step of a cycle), every
  rank skips that step (weights unchanged, loss scale halved) and the next step trains, with nothing hanging:
  a collective that one rank never joins fails the check by the deadline instead of blocking it.
Methods registered only inside the calling process (not installed) are unknown to the spawned workers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

WORLD = 2


def ddp_conformance(names: list[str] | tuple[str, ...], timeout: float = 180.0) -> dict[str, list[str]]:
    """Failure lines per method (empty: passed), from one spawned group running every method in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(_worker, args=(str(Path(tmp) / "init"), tmp, list(names)), nprocs=WORLD,
                                     join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() > deadline:
                    raise TimeoutError
        except TimeoutError:
            for p in context.processes:
                if p.is_alive():
                    p.terminate()
            done = _read(tmp)
            return {n: done.get(n, [f"ddp: the workers did not finish within {timeout:g} s (a rank waits in a "
                                    "collective the other never joins)"]) for n in names}
        except mp.ProcessRaisedException as exc:
            line = str(exc).strip().splitlines()[-1]
            return {n: [f"ddp: a worker failed: {line}"] for n in names}
        return _read(tmp)


def _read(folder: str) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for rank in range(WORLD):
        path = Path(folder) / f"rank{rank}.json"
        if path.exists():
            for name, lines in json.loads(path.read_text()).items():
                merged.setdefault(name, [])
                merged[name] += [line for line in lines if line not in merged[name]]
    return merged


def _worker(rank: int, init_file: str, out_dir: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {}
    for name in names:
        results[name] = _replicas(name, rank) + _fp16_skip(name, rank)
        # Written after each method: a later hang still leaves the earlier methods' verdicts.
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()  # neither rank tears gloo down while the other may still have work in flight (it aborted once)
    dist.destroy_process_group()


def _build(name: str, rank: int, precision: str = "fp32"):
    from .registry import create
    from .testing_tiny import LR, check_hparams, context_kwargs, tiny_net

    model = DDP(tiny_net(seed=rank))  # different inits: DDP must broadcast rank 0's weights
    base = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    extra = {"grad_scaler": torch.amp.GradScaler("cpu", init_scale=2.0**16)} if precision == "fp16" else {}
    method = create(name, model, base, **check_hparams(name), **context_kwargs(name), precision=precision, **extra)
    return model, method


def _weights(model: DDP) -> torch.Tensor:
    return torch.cat([p.detach().double().reshape(-1) for p in model.module.parameters()])


def _gap_to_rank0(model: DDP) -> float:
    mine = _weights(model)
    gathered = [torch.empty_like(mine) for _ in range(WORLD)]
    dist.all_gather(gathered, mine)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def _steps(name: str):
    from .registry import method_class
    from .testing_tiny import epochs_for, plan

    spec = method_class(name).spec
    steps = plan(epochs_for(name))
    active = int(spec.active_from(spec.defaults))
    first = next(i for i, (epoch, _) in enumerate(steps) if epoch >= active)
    return steps, first, max(1, int(spec.cycle(spec.defaults)))


def _step(method, x, y, epoch: int, idx: torch.Tensor, rank: int):
    method.set_epoch(epoch)  # idempotent
    mine = idx[rank::WORLD]
    return method.step(x[mine], y[mine], mine)


def _replicas(name: str, rank: int) -> list[str]:
    from .testing_tiny import tiny_data

    model, method = _build(name, rank)
    x, y = tiny_data()
    steps, _, _ = _steps(name)
    for t, (epoch, idx) in enumerate(steps):
        _step(method, x, y, epoch, idx, rank)
        if gap := _gap_to_rank0(model):
            return [f"ddp: after step {t} the workers' weights differ by max |Δ| = {gap:.3g} (tolerance 0)"]
    return []


def _fp16_skip(name: str, rank: int) -> list[str]:
    from .testing_tiny import tiny_data

    model, method = _build(name, rank, precision="fp16")
    x, y = tiny_data()
    steps, first, cycle = _steps(name)
    for epoch, idx in steps[:first]:
        _step(method, x, y, epoch, idx, rank)
    armed = {"on": False}

    def inject(module, args, output):
        if armed["on"] and output.requires_grad:
            armed["on"] = False
            return output + float("inf")
        return None

    model.module.register_forward_hook(inject)
    for t in range(first, min(len(steps), first + cycle)):
        epoch, idx = steps[t]
        before, scale = _weights(model), method.scaler.get_scale()
        armed["on"] = rank == 1  # only one rank meets the overflow
        _step(method, x, y, epoch, idx, rank)
        armed["on"] = False
        what = f"ddp fp16 skip: inf on rank 1 only, in the first gradient pass of step {t}"
        if gap := float((_weights(model) - before).abs().max()):
            return [f"{what}: rank {rank}'s weights moved by max |Δ| = {gap:.3g} (tolerance 0: every rank skips)"]
        if method.scaler.get_scale() != scale / 2:
            return [f"{what}: rank {rank}'s loss scale went {scale:g} -> {method.scaler.get_scale():g} (expected "
                    "halved)"]
        _step(method, x, y, epoch, idx, rank)
        if gap := _gap_to_rank0(model):
            return [f"{what}: after the next step the workers' weights differ by max |Δ| = {gap:.3g} (tolerance 0)"]
    return []
