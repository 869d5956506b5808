"""Tiny models, data and loaders for the optimizers tests (fast on 2 CPU cores)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

CLASSES = 4
MLP_IN = 6


def mlp(seed: int = 0, hidden: int = 12) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(MLP_IN, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, CLASSES)
    )


def convbn(seed: int = 0) -> nn.Module:
    """Two conv+BatchNorm2d blocks on 3x8x8 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, CLASSES),
    )


MODELS = {"mlp": mlp, "convbn": convbn}


def data(kind: str, n: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, MLP_IN) if kind == "mlp" else (n, 3, 8, 8)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return x, y


def epoch_order(n: int, batch: int, epoch: int, seed: int = 7) -> list[Tensor]:
    """A loader's index batches for one epoch, shuffled differently every epoch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [perm[i : i + batch] for i in range(0, n, batch)]


def base_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    if kind == "plain":
        return torch.optim.SGD(model.parameters(), lr=0.1)
    raise ValueError(kind)


def twin(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers (BatchNorm running stats, num_batches_tracked), detached clones."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(
    actual: nn.Module | dict, expected: nn.Module | dict, *, atol: float = 1e-6, exact: bool = False
) -> None:
    a = actual if isinstance(actual, dict) else model_state(actual)
    e = expected if isinstance(expected, dict) else model_state(expected)
    assert a.keys() == e.keys()
    for k in a:
        if exact or not a[k].is_floating_point():
            assert torch.equal(a[k], e[k]), (
                f"{k} differs: max abs diff {(a[k].double() - e[k].double()).abs().max()}"
            )
        else:
            torch.testing.assert_close(a[k], e[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def optimizer_state(opt: torch.optim.Optimizer) -> list[dict[str, Tensor]]:
    return [
        {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
        for g in opt.param_groups
        for p in g["params"]
    ]


def assert_same_optimizer_state(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b, strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            if torch.is_tensor(sa[k]):
                assert torch.equal(sa[k], sb[k]), k
            else:
                assert sa[k] == sb[k], k
