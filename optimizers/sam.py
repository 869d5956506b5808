"""SAM (Foret et al., ICLR 2021) and its adaptive variant ASAM (Kwon et al., ICML 2021).

    g = grad L(w);  e = rho * g / ||g||   (ASAM: e = rho * |w|^2 g / || |w| g ||)
    update w with grad L(w + e)

The ascent pass uses `torch.autograd.grad` on the parameters being perturbed, so ESAM's
unselected tensors get no weight-gradient kernels at all, and under DDP it runs under
`no_sync` (each worker perturbs with its own gradient, as in the paper's m-sharpness).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .base import Method, StepOutput
from .spec import HParam, MethodSpec, Search

_EPS = 1e-12

RHO = HParam("rho", float, 0.05, "perturbation radius rho of the ascent step e = rho g/||g||",
             source="SAM paper (Foret et al. 2021), CIFAR-10 WRN/ResNet; SAF paper Sec. 5", low=0.0,
             search=Search(0.01, 0.5, scale="log"))  # the SAM paper's own grid: {0.01, 0.02, 0.05, 0.1, 0.2, 0.5}
ADAPTIVE = HParam("adaptive", bool, False, "ASAM: scale the ascent by |w| (then use rho ~ 0.5-2)",
                  source="SAM's default (non-adaptive)")


def global_norm(tensors: list[Tensor]) -> Tensor:
    """||t|| over all tensors together, as a 0-dim tensor (no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def global_dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """<a, b> over all tensors together, as a 0-dim tensor (no host sync)."""
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b, strict=True)]).sum()


class SAM(Method):
    name = "sam"
    spec = MethodSpec(
        name="sam", paper="Foret et al., ICLR 2021 (ASAM: Kwon et al., ICML 2021)", passes=2.0,
        summary="ascent e = rho g/‖g‖ (first pass under DDP `no_sync`: per-worker perturbation), "
                "gradient at w+e, w restored exactly",
        hparams=(RHO, ADAPTIVE))

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, *, rho: float = RHO.default,
                 adaptive: bool = False, **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
        hp = SAM.spec.check({"rho": rho, "adaptive": adaptive})
        self.rho, self.adaptive = hp["rho"], hp["adaptive"]

    # ESAM overrides these two: which tensors are perturbed, and which samples the second pass sees.
    def ascent_params(self, params: list[nn.Parameter]) -> tuple[list[nn.Parameter], float]:
        """Tensors to perturb, and the factor dividing the perturbation (ESAM's beta)."""
        return params, 1.0

    def second_pass_batch(self, inputs: Tensor, targets: Tensor, clean_losses: Tensor) -> tuple[Tensor, Tensor]:
        return inputs, targets

    def step(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> StepOutput:
        self.base_optimizer.zero_grad(set_to_none=True)
        perturbed, beta = self.ascent_params(self.trainable_params())

        with self.no_sync():
            logits = self.forward(inputs)
            clean_losses = self.criterion(logits, targets, reduction="none")
            loss = clean_losses.mean()
            grads = self.ascent_gradient(loss, perturbed)
        if grads is None:  # fp16 overflow in the ascent pass: the scaler skipped the whole step
            self.after_step(False)
            return StepOutput(loss.detach(), logits.detach())

        originals = [p.detach().clone() for p in perturbed]
        if perturbed:  # ESAM's draw may select no tensor: then e = 0
            with torch.no_grad():
                torch._foreach_add_(perturbed, self.perturbation(perturbed, grads, beta))
        with self.perturbed_pass():
            x2, y2 = self.second_pass_batch(inputs, targets, clean_losses.detach())
            self.backward(self.criterion(self.forward(x2), y2))
        if perturbed:
            with torch.no_grad():
                torch._foreach_copy_(perturbed, originals)  # exact restore; subtracting e would leave rounding error
        stepped = self.optimizer_step()
        self.after_step(stepped)
        return StepOutput(loss.detach(), logits.detach())

    def ascent_gradient(self, loss: Tensor, params: list[nn.Parameter]) -> list[Tensor] | None:
        """Gradient of the clean loss w.r.t. `params` (unscaled); None when fp16 found inf/nan."""
        if not params:
            return []
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        grads = torch.autograd.grad(scaled, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        if self.scaler is None:
            return grads
        scale = self.scaler.get_scale()  # fp16 only: the scaler syncs on every step anyway
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all().to(torch.float32)
        if dist.is_available() and dist.is_initialized() and hasattr(self.model, "no_sync"):
            # The ascent pass is local under DDP: every rank must agree to skip, or the next all-reduce hangs.
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            # Hand the overflowing gradients to the scaler so that it skips the step and backs off
            # exactly as for an overflow in the last pass (scale and growth tracker alike).
            for p, g in zip(params, grads, strict=True):
                p.grad = g.to(p.dtype)
            self.optimizer_step()
            self.base_optimizer.zero_grad(set_to_none=True)
            return None
        return [g.float() / scale for g in grads]

    def perturbation(self, params: list[nn.Parameter], grads: list[Tensor], beta: float,
                     rho: float | None = None) -> list[Tensor]:
        """e = rho * g / (beta * ||g||); ASAM: e = rho * |w|^2 g / (beta * || |w| g ||); `rho` defaults to self.rho."""
        if not grads:
            return []
        if self.adaptive:
            grads = [p.detach().abs() * g for p, g in zip(params, grads, strict=True)]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = (self.rho if rho is None else rho) / (beta * (norm + _EPS))  # a 0-dim tensor: no host sync
        if self.adaptive:
            grads = [p.detach().abs() * g for p, g in zip(params, grads, strict=True)]
        return [(g * scale).to(p.dtype) for p, g in zip(params, grads, strict=True)]

    def local_sam_passes(self, inputs: Tensor, targets: Tensor,
                         rho: float) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """Both SAM passes at radius `rho`, under DDP `no_sync` (GSAM and LookSAM combine the two gradients
        per worker, then average once with `average_across_workers`).

        Returns (clean loss, clean logits, g = grad L(w) unscaled) and leaves grad L(w + e) in p.grad (scaled
        under fp16); g is None when fp16 overflowed in the ascent pass: the scaler has then skipped the step.
        """
        params = self.trainable_params()
        with self.no_sync():
            logits = self.forward(inputs)
            loss = self.criterion(logits, targets)
            grads = self.ascent_gradient(loss, params)
            if grads is None:
                return loss.detach(), logits.detach(), None
            originals = [p.detach().clone() for p in params]
            with torch.no_grad():
                torch._foreach_add_(params, self.perturbation(params, grads, 1.0, rho))
            with self.perturbed_pass():
                self.backward(self.criterion(self.forward(inputs), targets))
            with torch.no_grad():
                torch._foreach_copy_(params, originals)
        return loss.detach(), logits.detach(), grads
