"""Plumbing shared by the Hessian and landscape measurements.

Both measure a model without training it, so both must hand the model back exactly as found:
per-module training flags, BatchNorm buffers, weights and the global RNG.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
BN_MODES = ("eval", "train")


def default_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy: the training loss of every classification cell."""
    return F.cross_entropy(outputs, targets)


def check_bn_mode(bn_mode: str) -> None:
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode={bn_mode!r} is not allowed; use 'eval' or 'train'")


def check_batches(batches: Sequence[Batch]) -> None:
    if len(batches) == 0:
        raise ValueError("batches is empty; pass a list of (inputs, targets) pairs")


def batchnorm_modules(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def batch_size(batch: Batch) -> int:
    inputs, targets = batch
    ref = targets if isinstance(targets, Tensor) and targets.dim() > 0 else inputs
    return int(ref.shape[0])


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    raise ValueError("model has no parameters")


def _cuda_indices(model: nn.Module) -> list[int]:
    found = {t.device.index for t in model.parameters() if t.device.type == "cuda"}
    return sorted(i for i in found if i is not None)


@contextlib.contextmanager
def measurement_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Run the body with every module in eval mode except BatchNorm, which follows ``bn_mode``.

    Dropout and other stochastic layers stay off so that a measurement is a deterministic function
    of the weights. On exit each module gets back its own training flag (models may mix modes) and
    the global CPU/CUDA RNG streams are restored, whatever the body drew from them.
    """
    check_bn_mode(bn_mode)
    flags = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=_cuda_indices(model)):
        try:
            model.eval()
            if bn_mode == "train":
                for m in batchnorm_modules(model):
                    m.train()
            yield
        finally:
            for m, flag in flags:
                m.training = flag


def progress(iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """A tqdm bar on a terminal, the bare iterable otherwise (logs stay clean)."""
    if not sys.stderr.isatty():
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a declared dependency, but a bar is never worth a crash
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False)
