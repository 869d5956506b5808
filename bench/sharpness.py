"""SAM's one-step sharpness, L(w + rho g/||g||) - L(w): the per-epoch flatness of the SAF paper's Figure 4b.

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
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    rises = []
    try:
        for inputs, targets in batches:
            loss = F.cross_entropy(model(inputs).float(), targets)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            originals = [p.detach().clone() for p in params]
            with torch.no_grad():
                torch._foreach_add_(params, torch._foreach_mul(grads, rho / (norm + _EPS)))
                perturbed = F.cross_entropy(model(inputs).float(), targets)
                torch._foreach_copy_(params, originals)
            rises.append((perturbed - loss.detach()).double())
    finally:
        model.train(was_training)
    return float(torch.stack(rises).mean())  # one host sync per measurement
