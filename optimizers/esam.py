"""ESAM (Du et al., ICLR 2022): SAM made cheaper by two approximations.

SWP (stochastic weight perturbation): each parameter tensor joins the ascent with probability
beta; the others get no weight gradient in the ascent pass, and e = rho * g / (beta * ||g||).
SDS (sharpness-sensitive data selection): the descent pass sees only the ceil(gamma * B) samples
whose loss rose most under the perturbation, L_i(w + e) - L_i(w).
With beta = gamma = 1 every tensor is perturbed, every sample kept, and the step is SAM's.

`selection="official"` keeps the samples the official code (utils/Esam.py) keeps instead: every sample when
gamma >= 0.99, else those whose rise is strictly above the int(gamma B)-th largest rise (int(gamma B) - 1
of them without ties). Where that keeps none, the official loss is the mean of nothing (NaN); ours raises.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .base import StepOutput
from .sam import ADAPTIVE, RHO, SAM
from .spec import HParam, MethodSpec

SPEC = MethodSpec(
    # Counted at the defaults: clean forward-backward (1), the no-grad selection forward at w + e (1/3 of a
    # forward-backward) and the descent pass on gamma B samples (1/2); SWP's savings in the ascent backward
    # (unselected tensors get no weight gradient) are not in this count.
    name="esam", paper="Du et al., ICLR 2022", passes=1.0 + 1.0 / 3.0 + 0.5,
    draws_random=True,
    summary="SWP: each tensor perturbed with prob. beta (unselected tensors get no weight-gradient work), e scaled "
            "1/beta; SDS: second pass on the ceil(gamma B) samples whose loss rose most",
    hparams=(RHO, ADAPTIVE,
             HParam("beta", float, 0.5, "SWP: probability that a parameter tensor is perturbed",
                    source="ESAM paper, Sec. 4 (CIFAR)", low=0.0, high=1.0, low_open=True, sets_cost=True),
             HParam("gamma", float, 0.5, "SDS: fraction of the batch, by largest loss rise, in the descent pass",
                    source="ESAM paper, Sec. 4 (CIFAR)", low=0.0, high=1.0, low_open=True, sets_cost=True),
             HParam("selection", str, "paper", "SDS rule: the paper's ceil(gamma B) largest rises, or the official "
                    "code's rises above the int(gamma B)-th largest", source="ESAM paper, Sec. 3.2",
                    choices=("paper", "official"), added_later=True)))


class ESAM(SAM):
    name = "esam"
    spec = SPEC

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, *, rho: float = RHO.default,
                 beta: float = SPEC.defaults["beta"], gamma: float = SPEC.defaults["gamma"],
                 selection: str = SPEC.defaults["selection"], seed: int = 0, **common: Any) -> None:
        super().__init__(model, base_optimizer, rho=rho, **common)
        hp = SPEC.check({"rho": rho, "beta": beta, "gamma": gamma, "selection": selection,
                         "adaptive": common.get("adaptive", False)})
        self.beta, self.gamma, self.selection = hp["beta"], hp["gamma"], hp["selection"]
        self.seed = int(seed)
        # A private CPU generator: the tensor draw needs no device sync and is saved in state_dict.
        self.generator = torch.Generator().manual_seed(int(seed))
        self._selected_fraction = 1.0
        # Marked samples (Method.watch_samples) among those the descent pass kept this epoch, and the kept count:
        # summed on the device, read once per epoch by extra_metrics.
        self._kept = torch.zeros(2, dtype=torch.long, device=self.device)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._kept.zero_()

    def step(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> StepOutput:
        self._indices = indices  # for the selection share only; the step itself needs no index
        return super().step(inputs, targets, indices)

    def ascent_params(self, params: list[nn.Parameter]) -> tuple[list[nn.Parameter], float]:
        self._before_draw = self.generator.get_state()  # an fp16-skipped step leaves the draw untaken
        keep = torch.rand(len(params), generator=self.generator) < self.beta
        return [p for p, k in zip(params, keep.tolist(), strict=True) if k], self.beta

    def second_pass_batch(self, inputs: Tensor, targets: Tensor, clean_losses: Tensor) -> tuple[Tensor, Tensor]:
        batch = targets.shape[0]
        official = self.selection == "official"
        k = int(self.gamma * batch) if official else max(1, math.ceil(self.gamma * batch))
        if (official and self.gamma >= 0.99) or k == batch:
            self._selected_fraction = 1.0
            self._count_marked(None)
            return inputs, targets
        if k == 0:
            raise ValueError(f"ESAM selection='official' with gamma={self.gamma} keeps no sample of a batch of "
                             f"{batch} (int(gamma B) = 0); raise gamma or the batch size")
        with torch.no_grad(), self.frozen_bn():
            perturbed_losses = self.criterion(self.forward(inputs), targets, reduction="none")
        rises = perturbed_losses - clean_losses
        if official:  # one device-to-host sync for the count, as the official boolean index has too
            chosen = (rises > torch.topk(rises, k).values[-1]).nonzero().squeeze(1)
            if chosen.numel() == 0:
                raise ValueError(f"ESAM selection='official' kept no sample of a batch of {batch} (gamma={self.gamma}: "
                                 "no rise is above the int(gamma B)-th largest); the official loss would be NaN")
        else:
            chosen = torch.topk(rises, k, sorted=False).indices
        self._selected_fraction = chosen.numel() / batch
        self._count_marked(chosen)
        return inputs[chosen], targets[chosen]

    def _count_marked(self, chosen: Tensor | None) -> None:
        flagged, indices = getattr(self, "flagged", None), getattr(self, "_indices", None)
        if flagged is not None and indices is not None:
            kept = flagged[indices if chosen is None else indices[chosen]]
            self._kept[0] += kept.sum()
            self._kept[1] += kept.numel()  # a scalar kernel argument: no host-to-device copy

    def after_step(self, stepped: bool | None) -> None:
        if stepped is False:
            self.generator.set_state(self._before_draw)

    def extra_metrics(self) -> dict[str, float]:
        out = {"esam_selected_fraction": self._selected_fraction}
        if getattr(self, "flagged", None) is not None:  # label noise: the share of kept samples with a flipped label
            marked, kept = self._kept.tolist()
            out["esam_selected_flipped_share"] = marked / kept if kept else math.nan
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
