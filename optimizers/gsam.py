"""GSAM: surrogate gap guided SAM (Zhuang et al., ICLR 2022, Algorithm 1).

    rho_t = rho_min + (rho - rho_min) (lr_t - lr_min) / (lr_max - lr_min), clamped at 0
    g = grad L(w);  e = rho_t g / (||g|| + 1e-12);  g_p = grad L(w + e)
    g_perp = g - (<g, g_p> / ||g_p||^2) g_p      (global norms over all parameters)
    the base optimizer steps at w with d = g_p - alpha g_perp

lr_t is the lr this step uses (the base optimizer's first param group); rho_t = rho when lr_max = lr_min.
The clamp only matters when lr_t < lr_min (warm-up below the floor of a step schedule). alpha = 0 is SAM
at radius rho_t. Weight decay stays in the base optimizer. Under DDP both passes are local and d is averaged
once, as in the official code: each worker decomposes its own gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import StepOutput
from .sam import _EPS, SAM, global_dot, global_norm
from .spec import HParam, MethodSpec, Search, check_range

SPEC = MethodSpec(
    name="gsam", paper="Zhuang et al., ICLR 2022", passes=2.0, needs_lr_range=True,
    summary="SAM at a radius following the lr (rho_min..rho); steps with g_p - alpha g_perp, g_perp the clean "
            "gradient's part orthogonal to the perturbed one (per worker under DDP, then averaged)",
    hparams=(HParam("rho", float, 0.04, "perturbation radius: GSAM's rho_max, reached at the schedule's peak lr",
                    source="GSAM paper, ResNet-50/101 on ImageNet (ViT-S/32: 0.6)", low=0.0,
                    search=Search(0.01, 0.5, scale="log")),
             HParam("rho_min", float, 0.02, "GSAM's radius at the schedule's lowest lr",
                    source="GSAM paper, ResNet-50/101 on ImageNet (ViT-S/32: 0.0)", low=0.0),
             HParam("alpha", float, 0.01, "weight alpha of the orthogonal/reused gradient component (GSAM: of g_perp)",
                    source="GSAM paper, ResNet-50/101 on ImageNet (ViT-S/32: 0.4)", low=0.0,
                    search=Search(0.01, 0.5, scale="log"))))


class GSAM(SAM):
    name = "gsam"
    spec = SPEC

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, *, rho: float = 0.04,
                 rho_min: float = 0.02, alpha: float = 0.01, lr_max: float | None = None, lr_min: float | None = None,
                 **common: Any) -> None:
        super().__init__(model, base_optimizer, rho=rho, **common)
        hp = SPEC.check({"rho": rho, "rho_min": rho_min, "alpha": alpha})
        self.rho, self.rho_min, self.alpha = hp["rho"], hp["rho_min"], hp["alpha"]
        lr = float(base_optimizer.param_groups[0]["lr"])  # no schedule given: a constant lr, rho_t = rho
        self.lr_max = lr if lr_max is None else float(lr_max)
        self.lr_min = self.lr_max if lr_min is None else float(lr_min)
        check_range("lr_min", self.lr_min, 0.0, self.lr_max, low_open=False, high_open=False)
        self.last_rho = self.rho

    def rho_t(self) -> float:
        """The radius for the lr this step uses, clamped at 0."""
        if self.lr_max == self.lr_min:
            return self.rho
        lr = float(self.base_optimizer.param_groups[0]["lr"])
        frac = (lr - self.lr_min) / (self.lr_max - self.lr_min)
        return max(0.0, self.rho_min + (self.rho - self.rho_min) * frac)

    def step(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> StepOutput:
        self.base_optimizer.zero_grad(set_to_none=True)
        self.last_rho = self.rho_t()
        loss, logits, grads = self.local_sam_passes(inputs, targets, self.last_rho)
        if grads is None:  # fp16 overflow in the ascent pass: the whole step was skipped
            self.after_step(False)
            return StepOutput(loss, logits)
        # p.grad holds g_p, scaled by the fp16 loss scale s; work in scaled units (the projection
        # coefficient is scale-free) and let the scaler unscale d as it does any gradient.
        s = self.scaler.get_scale() if self.scaler is not None else 1.0
        live = [(p.grad, g if s == 1.0 else g * s)
                for p, g in zip(self.trainable_params(), grads, strict=True) if p.grad is not None]
        if live:
            g_p, g = (list(t) for t in zip(*live, strict=True))
            with torch.no_grad():
                dot = global_dot(g, g_p)
                coef = dot / (global_norm(g_p).square() + _EPS)
                # d = g_p - alpha (g - coef g_p) = (1 + alpha coef) g_p - alpha g
                torch._foreach_mul_(g_p, 1.0 + self.alpha * coef)
                torch._foreach_add_(g_p, g, alpha=-self.alpha)
            self.average_across_workers(g_p)
        stepped = self.optimizer_step()
        self.after_step(stepped)
        return StepOutput(loss, logits)

    def extra_metrics(self) -> dict[str, float]:
        return {"gsam_rho": self.last_rho}
