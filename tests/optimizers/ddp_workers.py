"""Worker processes for test_ddp.py (a plain module so that spawn can import it cheaply)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

WORLD = 2
SAF_N, SAF_BATCH, SAF_EPOCHS, SAF_E_TILDE = 32, 4, 5, 2
SAM_STEPS, SAM_BATCH = 3, 6
SAM_CASES = {
    "sam": {"rho": 0.3},
    "esam-1-1": {"rho": 0.3, "beta": 1.0, "gamma": 1.0},
    "esam-sds-swp": {"rho": 0.3, "beta": 0.5, "gamma": 0.5, "seed": 2},
}
GSAM_CASES = {  # both passes per worker, the combined direction averaged once
    "gsam": {"rho": 0.3, "rho_min": 0.3, "alpha": 0.5},
    "looksam": {"rho": 0.3, "k": 2, "alpha": 0.7},  # steps: SAM, reuse, SAM
}
ONE_PASS_CASES = {
    "sgd": {},
    "mesa": {"e_start": 0, "ema_decay": 0.5, "lam": 0.8, "tau": 2.0},
}


def spawn(fn, args: tuple, nprocs: int = WORLD, timeout: float = 60.0) -> None:
    """mp.spawn with a deadline: a collective that never completes fails the test instead of hanging."""
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in context.processes:
                if p.is_alive():
                    p.terminate()
            raise TimeoutError(f"DDP workers did not finish within {timeout} s")


def _init(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def sam_data():
    g = torch.Generator().manual_seed(11)
    from .tiny import CLASSES, MLP_IN

    x = torch.randn(SAM_STEPS, WORLD, SAM_BATCH, MLP_IN, generator=g)
    y = torch.randint(0, CLASSES, (SAM_STEPS, WORLD, SAM_BATCH), generator=g)
    return x, y


def worker(rank: int, init_file: str, out_dir: str) -> None:
    """Everything the DDP tests need, in one pair of processes (spawning costs seconds)."""
    _init(rank, init_file)
    results = {"saf": saf_part(rank), "two_pass": sam_part(rank)}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def saf_part(rank: int) -> dict:
    import optimizers
    import optimizers.saf as saf_module

    from .tiny import CLASSES, base_optimizer, data, mlp

    records = {}
    original = saf_module.trajectory_loss
    captured: list[torch.Tensor] = []

    def recording(logits, old, tau, weights=None):
        # Every sample is seen every epoch here, so every target must exist.
        assert weights is not None and bool(weights.all())
        captured.append(old.detach().clone())
        return original(logits, old, tau, weights=weights)

    saf_module.trajectory_loss = recording
    x, y = data("mlp", SAF_N)
    for store_dtype in ("float32", "float16", "bfloat16"):
        model = DDP(mlp(seed=rank))  # different inits: DDP must broadcast rank 0's weights
        method = optimizers.create(
            "saf",
            model,
            base_optimizer("sgd", model),
            num_samples=SAF_N,
            num_classes=CLASSES,
            lam=0.5,
            tau=2.0,
            e_tilde=SAF_E_TILDE,
            e_start=0,
            store_dtype=store_dtype,
        )
        sampler = DistributedSampler(range(SAF_N), num_replicas=WORLD, rank=rank, shuffle=True, seed=3)
        steps = []
        for epoch in range(SAF_EPOCHS):
            sampler.set_epoch(epoch)
            method.set_epoch(epoch)
            order = torch.tensor(list(sampler))
            for start in range(0, len(order), SAF_BATCH):
                idx = order[start : start + SAF_BATCH]
                captured.clear()
                out = method.step(x[idx], y[idx], idx)
                steps.append(
                    {
                        "epoch": epoch,
                        "indices": idx,
                        "logits": out.logits.clone(),
                        "old": captured[0] if captured else None,
                    }
                )
        records[store_dtype] = {
            "steps": steps,
            "params": [p.detach().clone() for p in model.module.parameters()],
        }
    saf_module.trajectory_loss = original
    return records


def sam_part(rank: int) -> dict:
    import optimizers

    from .tiny import base_optimizer, mlp

    x, y = sam_data()
    results = {}
    for case, hp in {**SAM_CASES, **ONE_PASS_CASES, **GSAM_CASES}.items():
        name = case.split("-")[0]
        model = DDP(mlp(seed=0))
        method = optimizers.create(name, model, base_optimizer("sgd", model), **hp)
        losses = []
        for step in range(SAM_STEPS):
            out = method.step(x[step, rank], y[step, rank])
            losses.append(out.loss.clone())
        results[case] = {"params": [p.detach().clone() for p in model.module.parameters()], "losses": losses}
        if name == "mesa":
            results[case]["ema"] = [p.detach().clone() for p in method.ema.parameters()]
    return results
