"""The trajectory loss shared by SAF and MESA (Du et al., NeurIPS 2022, Eq. 6)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def trajectory_loss(logits: Tensor, old_logits: Tensor, tau: float) -> Tensor:
    """tau^2 * mean_i KL(softmax(z_old_i / tau) || softmax(z_i / tau)), computed in fp32."""
    log_p_new = F.log_softmax(logits.float() / tau, dim=1)
    log_p_old = F.log_softmax(old_logits.float() / tau, dim=1)
    return tau * tau * F.kl_div(log_p_new, log_p_old, reduction="batchmean", log_target=True)
