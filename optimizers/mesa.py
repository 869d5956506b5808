"""MESA: memory-efficient SAF (Du et al., NeurIPS 2022, Sec. 4.3).

The trajectory loss of SAF with z_old replaced by the output of an exponential moving average
of the model: no per-sample store, one extra no-grad forward per step once active.
The EMA starts as a copy of the model and is updated after every base step from the first
(ema = d * ema + (1 - d) * w, buffers too); it runs in eval mode.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from .base import Method, unwrap
from .saf import E_START, TAU
from .spec import HParam, MethodSpec, Search
from .trajectory import trajectory_loss

SPEC = MethodSpec(
    name="mesa", paper="Du et al., NeurIPS 2022, Sec. 4.3", passes=1.0 + 1.0 / 3.0,  # + a no-grad EMA forward
    summary="the same loss with z_old from an EMA copy of the model",
    hparams=(HParam("lam", float, 0.8, "weight lambda of the trajectory loss", source="SAF paper, Sec. 5 (MESA)",
                    low=0.0, search=Search(0.1, 2.0, scale="log")),
             TAU, E_START,
             HParam("ema_decay", float, 0.9998, "decay d of the EMA teacher, ema = d ema + (1 - d) w",
                    source="official MESA code (CIFAR, 200 epochs)", low=0.0, high=1.0, high_open=True,
                    search=Search(0.9, 0.9998, scale="log1m"))),
    active_from=lambda hp: int(hp["e_start"]))


class MESA(Method):
    name = "mesa"
    spec = SPEC

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, *, lam: float = SPEC.defaults["lam"],
                 tau: float = TAU.default, e_start: int = E_START.default,
                 ema_decay: float = SPEC.defaults["ema_decay"], **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
        hp = SPEC.check({"lam": lam, "tau": tau, "e_start": e_start, "ema_decay": ema_decay})
        self.lam, self.tau, self.e_start, self.ema_decay = hp["lam"], hp["tau"], hp["e_start"], hp["ema_decay"]
        source = unwrap(model)
        self.ema = copy.deepcopy(source).eval().requires_grad_(False)
        self._pairs_params = (list(self.ema.parameters()), [p.detach() for p in source.parameters()])
        float_buffers = [(e, b) for e, b in zip(self.ema.buffers(), source.buffers(), strict=True)]
        self._float_buffers = [(e, b) for e, b in float_buffers if e.is_floating_point()]
        self._other_buffers = [(e, b) for e, b in float_buffers if not e.is_floating_point()]

    @property
    def active(self) -> bool:
        return self.epoch >= SPEC.active_from({"e_start": self.e_start})

    def regularizer(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor | None) -> Tensor | float:
        if not self.active:
            return 0.0
        with torch.no_grad():
            ema_logits = self.forward(inputs, self.ema)
        return self.lam * trajectory_loss(logits, ema_logits, self.tau)

    def after_step(self, stepped: bool | None) -> None:
        if stepped is False:
            return
        weight = 1.0 - self.ema_decay
        with torch.no_grad():
            torch._foreach_lerp_(self._pairs_params[0], self._pairs_params[1], weight)
            if self._float_buffers:
                ema_b, src_b = zip(*self._float_buffers, strict=True)
                torch._foreach_lerp_(list(ema_b), list(src_b), weight)
            if self._other_buffers:  # integer buffers (BatchNorm's num_batches_tracked) are copied
                ema_b, src_b = zip(*self._other_buffers, strict=True)
                torch._foreach_copy_(list(ema_b), list(src_b))

    def extra_metrics(self) -> dict[str, float]:
        ema_bytes = sum(t.numel() * t.element_size() for t in self.extra_state()["ema"])
        return {"mesa_ema_bytes": float(ema_bytes)}

    def extra_state(self) -> dict[str, list[Tensor]]:
        return {"ema": list(self.ema.state_dict().values())}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ema.load_state_dict(state["ema"])
