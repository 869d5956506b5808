"""LookSAM (Liu et al., CVPR 2022): SAM's two passes only every k-th step, its extra direction reused between.

Steps t are counted from 0 over the whole run (not per epoch). Every step g = grad L(w). Then
    t mod k = 0:  e = rho g/||g||,  g_s = grad L(w + e),  g_v = g_s - (<g, g_s>/||g||^2) g;  update with g_s
    otherwise:    update with g + alpha (||g|| / ||g_v||) g_v
with global norms (1e-12 added to the denominators). No official code exists; this follows the paper.
`per_tensor=True` is the form of pytorch-optimizer's LookSAM (from the unofficial rollovd/LookSAM): the same
projection within each parameter tensor, and g + alpha (||g|| / (||g_v|| + 1e-8)) g_v with that tensor's norms.
k = 1 is SAM. Cost: (k + 1)/k passes on average, plus g_v (one parameter-sized buffer, in state_dict).

The counter counts steps taken: an fp16 step skipped on inf/nan leaves the counter and g_v as they were,
so a skipped SAM step is retried on the next batch and g_v always comes from a step that was taken.
Under DDP the SAM steps' passes are local; g_s and g_v are averaged over the workers in one all-reduce,
so every worker holds the same g_v. The reuse steps are plain DDP steps (g averaged by DDP).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import StepOutput
from .sam import _EPS, RHO, SAM, global_dot, global_norm
from .spec import HParam, MethodSpec, Search

K = 5
SPEC = MethodSpec(
    name="looksam", title="LookSAM", paper="Liu et al., CVPR 2022", passes=(K + 1) / K, cycle=lambda hp: int(hp["k"]),
    summary="SAM's two passes every k-th step, storing g_v = the part of g_s orthogonal to g; the steps between "
            "take one pass and add alpha ‖g‖/‖g_v‖ g_v (passes shown for k = 5)",
    hparams=(RHO,
             HParam("k", int, K, "LookSAM: the perturbed gradient is computed every k-th step (k = 1 is SAM)",
                    source="LookSAM paper (Liu et al. 2022), default k = 5", low=1, sets_cost=True),
             HParam("alpha", float, 0.7, "weight alpha of the orthogonal/reused gradient component (LookSAM: of g_v)",
                    source="LookSAM paper (Liu et al. 2022)", low=0.0, search=Search(0.1, 1.0)),
             HParam("per_tensor", bool, False, "LookSAM: project and rescale g_v per parameter tensor, as "
                    "pytorch-optimizer's LookSAM does (default: the paper's whole-vector form)",
                    source="LookSAM paper, Algorithm 1 (whole vector)", added_later=True, sets_cost=True)))
_PER_TENSOR_EPS = 1e-8  # pytorch-optimizer's, in the reuse step's ||g_v|| of each tensor


class LookSAM(SAM):
    name = "looksam"
    spec = SPEC

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, *, rho: float = RHO.default,
                 k: int = K, alpha: float = 0.7, per_tensor: bool = False, **common: Any) -> None:
        super().__init__(model, base_optimizer, rho=rho, **common)
        hp = SPEC.check({"rho": rho, "k": k, "alpha": alpha, "per_tensor": per_tensor})
        self.rho, self.k, self.alpha, self.per_tensor = hp["rho"], hp["k"], hp["alpha"], hp["per_tensor"]
        self.steps = 0  # steps taken so far, over the whole run
        self.g_v: list[Tensor] | None = None
        self._g_v_norm: Tensor | None = None  # ||g_v||, fixed between SAM steps

    def step(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> StepOutput:
        self.base_optimizer.zero_grad(set_to_none=True)
        if self.steps % self.k == 0 or self.g_v is None:
            loss, logits, stepped = self._sam_step(inputs, targets)
        else:
            loss, logits, stepped = self._reuse_step(inputs, targets)
        if stepped is not False:
            self.steps += 1
        self.after_step(stepped)
        return StepOutput(loss, logits)

    def _sam_step(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, bool | None]:
        loss, logits, grads = self.local_sam_passes(inputs, targets, self.rho)
        if grads is None:  # fp16 overflow in the ascent pass: skipped, g_v untouched
            return loss, logits, False
        s = self.scaler.get_scale() if self.scaler is not None else 1.0
        params = self.trainable_params()
        for p in params:  # a parameter the loss does not reach: g_s = 0, as g
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        with torch.no_grad():
            # Unscaled: g_v outlives this step's loss scale. `grads` (fresh tensors) become g_v in place. g_s in
            # g's dtype (the parameters', at least float32), or the dot products mix dtypes.
            g_s = [p.grad if s == 1.0 and p.grad.dtype == g.dtype else p.grad.to(g.dtype) / s
                   for p, g in zip(params, grads, strict=True)]
            if self.per_tensor:  # each tensor's own projection coefficient
                coefs = [torch.dot(g.reshape(-1), h.reshape(-1)) / (g.square().sum() + _EPS)
                         for g, h in zip(grads, g_s, strict=True)]
                torch._foreach_mul_(grads, [-c for c in coefs])
            else:
                torch._foreach_mul_(grads, -global_dot(grads, g_s) / (global_norm(grads).square() + _EPS))
            torch._foreach_add_(grads, g_s)
        self.average_across_workers([p.grad for p in params] + grads)
        stepped = self.optimizer_step()
        if stepped is not False:  # an fp16-skipped step leaves the old g_v
            self.g_v, self._g_v_norm = grads, global_norm(grads)
        return loss, logits, stepped

    def _reuse_step(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, bool | None]:
        logits = self.forward(inputs)
        loss = self.criterion(logits, targets)
        self.backward(loss)
        params = [p for p in self.trainable_params()]
        g = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        with torch.no_grad():
            # Scale-free: under fp16 g is scaled by s, and so is alpha ||g||/||g_v|| g_v.
            if self.per_tensor:
                ratios = [self.alpha * n / (m + _PER_TENSOR_EPS)
                          for n, m in zip(torch._foreach_norm(g), torch._foreach_norm(self.g_v), strict=True)]
                torch._foreach_add_(g, torch._foreach_mul(self.g_v, ratios))
            else:
                ratio = global_norm(g) / (self._g_v_norm + _EPS)
                torch._foreach_add_(g, torch._foreach_mul(self.g_v, self.alpha * ratio))
        for p, d in zip(params, g, strict=True):
            p.grad = d
        return loss.detach(), logits.detach(), self.optimizer_step()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["steps"] = self.steps
        state["g_v"] = self.g_v
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps = int(state["steps"])
        g_v = state["g_v"]
        self.g_v = None if g_v is None else [t.to(p.device) for t, p in zip(g_v, self.trainable_params(), strict=True)]
        self._g_v_norm = None if self.g_v is None else global_norm(self.g_v)

    def extra_metrics(self) -> dict[str, float]:
        return {"looksam_gv_bytes": float(sum(t.numel() * t.element_size() for t in self.g_v or []))}

    def extra_state(self) -> dict[str, list[Tensor]]:
        return {"g_v": list(self.g_v or [])}
