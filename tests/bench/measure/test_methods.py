"""bench.measure.methods: methods built from their specs, and the extra state they report for memory accounting."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bench.measure.methods import METHODS, active_epoch, build_method, optimizer_for, store_location
from bench.models import create_model

RNG_STATE = "generator"  # ESAM's host random-number state: saved to resume, not memory its steps work on


def test_base_optimizer_follows_the_paper() -> None:
    assert optimizer_for("timm:vit_small_patch32_224") == "adamw" and optimizer_for("resnet18") == "sgd"


def _tensor_bytes(value: Any) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


@pytest.mark.parametrize("name", METHODS)
def test_extra_state_is_all_the_checkpoint_keeps_beyond_the_base_optimizer(name: str) -> None:
    """The reference is the state_dict, which must hold everything a resume needs: a method that keeps a
    new buffer between steps but leaves it out of extra_state fails here."""
    net = create_model("mlp_tiny", num_classes=10, img_size=4)
    method = build_method(name, net, optimizer="sgd", num_samples=8, num_classes=10, precision="fp32")
    method.set_epoch(active_epoch(method))
    for _ in range(2):  # LookSAM keeps g_v from its first step on
        method.step(torch.randn(4, 3, 4, 4), torch.arange(4), torch.arange(4))
    state = method.state_dict()
    beyond = {k: _tensor_bytes(v) for k, v in state.items()
              if k not in ("method", "epoch", "base_optimizer", RNG_STATE)}
    reported = {k: _tensor_bytes(v) for k, v in method.extra_state().items()}
    assert reported == {k: b for k, b in beyond.items() if b}
    assert (store_location(method) is None) == ("store" not in reported)
