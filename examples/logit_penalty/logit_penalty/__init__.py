"""LogitPenalty: cross-entropy plus penalty * mean_i ||z_i||^2 / C, a one-pass method declared for safbench.

The whole method is its spec and one hook: the base class does the forward, the backward, mixed precision,
DDP and the base optimizer's step, and adds `regularizer(...)` to the clean pass's cross-entropy.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from optimizers import HParam, Method, MethodSpec
from optimizers.base import loss_precision

PENALTY = HParam("penalty", float, 0.01, "weight of the mean squared logit in the loss", source="this example",
                 low=0.0)


class LogitPenalty(Method):
    name = "logitpen"
    spec = MethodSpec(name="logitpen", summary="CE + penalty * mean squared logit", paper="an example plugin",
                      hparams=(PENALTY,), passes=1.0)

    def __init__(self, model, base_optimizer, *, penalty: float = PENALTY.default, **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
        self.penalty = self.spec.check({"penalty": penalty})["penalty"]  # a bad value raises ValueError

    def regularizer(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor | None) -> Tensor:
        # In fp32 under autocast (float64 for a float64 model), like the built-in losses.
        return self.penalty * loss_precision(logits).square().mean()
