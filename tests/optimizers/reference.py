"""Reference training steps written from the spec in plain torch, with loops.

Nothing here imports `optimizers`. Where the package uses a library call, the reference uses a
formula or a different mechanism (cross-entropy and KL from log-sum-exp; BatchNorm buffers saved and
restored instead of toggling `track_running_stats`; the SAM norm in float64 on the host; the ESAM
selection by sorting in Python; the SAF targets from a per-epoch dictionary instead of a slot table;
the MESA average as d * ema + (1 - d) * w instead of lerp).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

EPS = 1e-12


def ref_ce(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Per-sample cross-entropy with label smoothing, from its definition."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays float64
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    rows = []
    for i in range(logits.shape[0]):
        nll = -logp[i, int(targets[i])]
        uniform = -logp[i].sum() / logits.shape[1]
        rows.append((1.0 - label_smoothing) * nll + label_smoothing * uniform)
    return torch.stack(rows)


def ref_trajectory(logits: Tensor, old: Tensor, tau: float) -> Tensor:
    """tau^2 * mean_i sum_c q_ic (log q_ic - log p_ic), q = softmax(old_i / tau), p = softmax(z_i / tau)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(dtype) / tau
    zo = old.to(dtype) / tau
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)
    log_q = zo - torch.logsumexp(zo, dim=1, keepdim=True)
    total = 0.0
    for i in range(z.shape[0]):
        total = total + (log_q[i].exp() * (log_q[i] - log_p[i])).sum()
    return tau * tau * total / z.shape[0]


def opt_params(opt: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in opt.param_groups for p in group["params"]]


@contextlib.contextmanager
def restored_buffers(model: nn.Module) -> Iterator[None]:
    """Whatever the block does to the buffers (BN running stats, counters) is undone afterwards."""
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved, strict=True):
                b.copy_(s)


def apply_grads(opt: torch.optim.Optimizer, grads: list[Tensor]) -> None:
    opt.zero_grad(set_to_none=True)
    for p, g in zip(opt_params(opt), grads, strict=True):
        p.grad = g.detach().clone()
    opt.step()


def sgd_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    label_smoothing: float = 0.0,
    extra=None,
) -> tuple[Tensor, Tensor]:
    """One clean forward-backward; `extra(logits)` is added to the mean CE."""
    opt.zero_grad(set_to_none=True)
    logits = model(x)
    loss = ref_ce(logits, y, label_smoothing).mean()
    total = loss if extra is None else loss + extra(logits)
    total.backward()
    opt.step()
    return loss.detach(), logits.detach()


def sam_grads(
    model: nn.Module,
    params: list[nn.Parameter],
    x: Tensor,
    y: Tensor,
    *,
    rho: float,
    adaptive: bool = False,
    label_smoothing: float = 0.0,
    bn_update: str = "clean",
    mask: list[bool] | None = None,
    beta: float = 1.0,
    gamma: float = 1.0,
    selection: str = "paper",
):
    """SAM/ASAM/ESAM descent gradient at the current weights (weights restored afterwards).

    Returns (gradients for `params`, clean mean loss, clean logits, chosen sample indices).
    """
    logits = model(x)  # clean pass: updates BN running stats in train mode
    clean = ref_ce(logits, y, label_smoothing)
    loss = clean.mean()
    mask = [True] * len(params) if mask is None else mask
    chosen_params = [p for p, m in zip(params, mask, strict=True) if m]
    grads = torch.autograd.grad(loss, chosen_params, allow_unused=True) if chosen_params else []
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(chosen_params, grads, strict=True)]
    if adaptive:
        normed = [p.detach().abs() * g for p, g in zip(chosen_params, grads, strict=True)]
        direction = [p.detach().abs() ** 2 * g for p, g in zip(chosen_params, grads, strict=True)]
    else:
        normed = direction = grads
    norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in normed))
    originals = [p.detach().clone() for p in chosen_params]
    with torch.no_grad():
        for p, d in zip(chosen_params, direction, strict=True):
            p.add_(rho * d / (beta * (norm + EPS)))

    batch = y.shape[0]
    # Paper: the ceil(gamma B) largest rises. Official utils/Esam.py: every sample when gamma >= 0.99, else the
    # rises strictly greater than the int(gamma B)-th largest one.
    official = selection == "official"
    k = int(gamma * batch) if official else max(1, math.ceil(gamma * batch))
    chosen = list(range(batch))
    if k < batch and not (official and gamma >= 0.99):
        with torch.no_grad(), restored_buffers(model):
            perturbed = ref_ce(model(x), y, label_smoothing)
        rise = [float(perturbed[i] - clean[i].detach()) for i in range(batch)]
        if official:
            kth_largest = sorted(rise, reverse=True)[k - 1]
            chosen = [i for i in range(batch) if rise[i] > kth_largest]
        else:
            chosen = sorted(sorted(range(batch), key=lambda i: -rise[i])[:k])
    chosen_t = torch.tensor(chosen)
    ctx = restored_buffers(model) if bn_update == "clean" else contextlib.nullcontext()
    with ctx:
        out = model(x[chosen_t])
        descent = torch.autograd.grad(
            ref_ce(out, y[chosen_t], label_smoothing).mean(), params, allow_unused=True
        )
    with torch.no_grad():
        for p, w in zip(chosen_params, originals, strict=True):
            p.copy_(w)
    descent = [torch.zeros_like(p) if g is None else g for p, g in zip(params, descent, strict=True)]
    return descent, loss.detach(), logits.detach(), chosen


class RefESAM:
    """ESAM's random tensor draw: one torch.rand(n_params) per step from a seeded CPU generator."""

    def __init__(self, seed: int, beta: float) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.beta = beta

    def mask(self, n_params: int) -> list[bool]:
        draw = torch.rand(n_params, generator=self.generator)
        return [bool(draw[i] < self.beta) for i in range(n_params)]


def sam_step(
    model,
    opt,
    x,
    y,
    *,
    rho=0.05,
    adaptive=False,
    label_smoothing=0.0,
    bn_update="clean",
    esam: RefESAM | None = None,
    gamma: float = 1.0,
    selection: str = "paper",
):
    params = opt_params(opt)
    mask = esam.mask(len(params)) if esam is not None else None
    beta = esam.beta if esam is not None else 1.0
    grads, loss, logits, chosen = sam_grads(
        model,
        params,
        x,
        y,
        rho=rho,
        adaptive=adaptive,
        label_smoothing=label_smoothing,
        bn_update=bn_update,
        mask=mask,
        beta=beta,
        gamma=gamma,
        selection=selection,
    )
    apply_grads(opt, grads)
    return loss, logits, chosen


class RefSAF:
    """SAF with the past logits kept as {epoch: {sample index: logits}}."""

    def __init__(self, lam: float, tau: float, e_tilde: int, e_start: int) -> None:
        self.lam, self.tau, self.e_tilde, self.e_start = lam, tau, e_tilde, e_start
        self.history: dict[int, dict[int, Tensor]] = {}

    def step(self, model, opt, x, y, indices, epoch, label_smoothing=0.0):
        extra = None
        if epoch >= max(self.e_start, self.e_tilde):
            old = torch.stack([self.history[epoch - self.e_tilde][int(i)] for i in indices])
            extra = lambda z: self.lam * ref_trajectory(z, old, self.tau)  # noqa: E731
        loss, logits = sgd_step(model, opt, x, y, label_smoothing=label_smoothing, extra=extra)
        seen = self.history.setdefault(epoch, {})
        for row, i in enumerate(indices.tolist()):
            seen[i] = logits[row].clone()
        return loss, logits


class RefMESA:
    """MESA with its own EMA copy, averaged as d * ema + (1 - d) * w through state_dict tensors."""

    def __init__(self, model: nn.Module, lam: float, tau: float, e_start: int, decay: float) -> None:
        self.ema = copy.deepcopy(model).eval()
        self.lam, self.tau, self.e_start, self.decay = lam, tau, e_start, decay

    def step(self, model, opt, x, y, epoch, label_smoothing=0.0):
        extra = None
        if epoch >= self.e_start:
            with torch.no_grad():
                target = self.ema(x)
            extra = lambda z: self.lam * ref_trajectory(z, target, self.tau)  # noqa: E731
        loss, logits = sgd_step(model, opt, x, y, label_smoothing=label_smoothing, extra=extra)
        self.update_from(model)
        return loss, logits

    def update_from(self, model: nn.Module) -> None:
        src = model.state_dict()
        with torch.no_grad():
            for name, t in self.ema.state_dict().items():
                if t.is_floating_point():
                    t.copy_(self.decay * t + (1.0 - self.decay) * src[name])
                else:
                    t.copy_(src[name])
