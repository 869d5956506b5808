"""One-step sharpness after an epoch: SAM's L(w + rho g/||g||) - L(w) (the SAF paper's Figure 4b), and ASAM's
adaptive, scale-invariant version beside it.

Adaptive sharpness (Kwon et al., ICML 2021): with T_w = diag(|w|) elementwise, the ascent step is
e = rho T_w^2 g / ||T_w g||, the maximiser of the linearised loss over ||T_w^{-1} e|| <= rho. Rescaling a
layer's weights by c and the next one's by 1/c (a ReLU network's symmetry), or any weight in front of a
BatchNorm, leaves it unchanged, while the plain sharpness changes with the scale that weight decay and
BatchNorm set. T_w = |w| on every parameter, as our ASAM step does (optimizers/sam.py); the official ASAM
code adds eta = 0.01 to |w| of parameters named "weight" and leaves the others unscaled.

Measured on fixed, un-augmented training samples (the same for every method, seed and epoch) in
batches of the training batch size (m-sharpness, as SAM's ascent sees it), with BatchNorm in eval
mode so the measurement neither uses nor changes batch statistics; the weights are restored exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-12


def sam_sharpness(model: nn.Module, batches: list[tuple[Tensor, Tensor]], rho: float) -> float:
    """Mean over `batches` of L_B(w + rho g_B/||g_B||) - L_B(w), in float32 (cross-entropy, no smoothing)."""
    return _one_step(model, batches, rho, adaptive=False)


def adaptive_sharpness(model: nn.Module, batches: list[tuple[Tensor, Tensor]], rho: float) -> float:
    """Mean over `batches` of L_B(w + e_B) - L_B(w), e_B = rho |w|^2 g_B / || |w| g_B || (ASAM's ascent)."""
    return _one_step(model, batches, rho, adaptive=True)


def _one_step(model: nn.Module, batches: list[tuple[Tensor, Tensor]], rho: float, adaptive: bool) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    rises = []
    try:
        for inputs, targets in batches:
            loss = F.cross_entropy(model(inputs).float(), targets)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
            if adaptive:
                grads = [p.detach().abs() * g for p, g in zip(params, grads, strict=True)]  # T_w g
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            if adaptive:
                grads = [p.detach().abs() * g for p, g in zip(params, grads, strict=True)]  # T_w^2 g
            originals = [p.detach().clone() for p in params]
            with torch.no_grad():
                torch._foreach_add_(params, torch._foreach_mul(grads, rho / (norm + _EPS)))
                perturbed = F.cross_entropy(model(inputs).float(), targets)
                torch._foreach_copy_(params, originals)
            rises.append((perturbed - loss.detach()).double())
    finally:
        model.train(was_training)
    return float(torch.stack(rises).mean())  # one host sync per measurement
