"""Base optimizer and learning-rate schedule from a RunConfig (the schedule steps once per batch)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import RunConfig


def base_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on weights only: biases and norm parameters (1-D tensors) are left undecayed,
    # as in the ViT/AdamW recipes; for SGD+ResNets all parameters decay, as in the SAF paper.
    if config.optimizer == "adamw":
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                           momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov and config.momentum > 0)


def lr_factor(config: RunConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr after `step` batches: linear warm-up, then the chosen schedule."""
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        epoch = step // steps_per_epoch
        return config.lr_gamma ** sum(epoch >= m for m in config.lr_milestones)
    total = max(1, config.epochs * steps_per_epoch - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / total)))


def lr_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer,
                 steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step, steps_per_epoch))


def lr_range(config: RunConfig) -> tuple[float, float]:
    """(lr_max, lr_min) the schedule reaches after warm-up: what GSAM scales its radius between."""
    if config.schedule == "constant":
        return config.lr, config.lr
    if config.schedule == "step":
        reached = [m for m in config.lr_milestones if m < config.epochs]
        return config.lr, config.lr * config.lr_gamma ** len(reached)
    return config.lr, 0.0
