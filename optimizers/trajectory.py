"""The trajectory loss shared by SAF and MESA (Du et al., NeurIPS 2022, Eq. 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def trajectory_loss(logits: Tensor, old_logits: Tensor, tau: float, weights: Tensor | None = None) -> Tensor:
    """tau^2 * mean_i KL(softmax(z_old_i / tau) || softmax(z_i / tau)), computed in fp32 (float64 for float64
    logits).

    `weights` (0/1 per sample) drops samples without a target; the mean is still over the batch.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_p_new = F.log_softmax(logits.to(dtype) / tau, dim=1)
    log_p_old = F.log_softmax(old_logits.to(dtype) / tau, dim=1)
    per_sample = F.kl_div(log_p_new, log_p_old, reduction="none", log_target=True).sum(dim=1)
    if weights is not None:
        per_sample = torch.where(weights, per_sample, 0.0)  # where, not *, so a NaN target cannot leak
    return tau * tau * per_sample.mean()
