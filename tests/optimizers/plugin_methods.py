"""Method classes that tests/optimizers/test_plugins.py offers as `safbench.methods` entry points."""

from __future__ import annotations

from typing import Any

import optimizers

WIDTH = optimizers.HParam("width", float, 0.5, "a toy's penalty weight", low=0.0)


class Penalty(optimizers.Method):
    """Cross-entropy plus width * mean(logits^2)."""

    name = "penalty"
    spec = optimizers.MethodSpec(name="penalty", summary="toy", paper="none", hparams=(WIDTH,))

    def __init__(self, model, base_optimizer, *, width: float = 0.5, **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
        self.width = self.spec.check({"width": width})["width"]

    def regularizer(self, logits, inputs, targets, indices):
        return self.width * optimizers.base.loss_precision(logits).square().mean()


class Undeclared(optimizers.Method):
    """Declares a hyperparameter its constructor does not take."""

    name = "undeclared"
    spec = optimizers.MethodSpec(name="undeclared", summary="toy", paper="none", hparams=(WIDTH,))


class Clash(Penalty):
    name = "sam"
    spec = optimizers.MethodSpec(name="sam", summary="toy", paper="none", hparams=(WIDTH,))


class RhoAsText(optimizers.Method):
    """A `rho` of another type than SAM's: one flag cannot have two types."""

    name = "textrho"
    spec = optimizers.MethodSpec(name="textrho", summary="toy", paper="none",
                                 hparams=(optimizers.HParam("rho", str, "a", "toy", choices=("a", "b")),))

    def __init__(self, model, base_optimizer, *, rho: str = "a", **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
