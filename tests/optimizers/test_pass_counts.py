"""The deterministic guard beside the timed benchmark: how many passes each method's step makes.

Hooks placed here (not in the code under test) record every forward pass of the model (batch size,
whether autograd was on, which network: the model or MESA's EMA), every backward pass through the
model's output (the gradient's batch size), and every base-optimizer step. A method that gained an
extra pass, or lost its savings, fails here whatever the machine's speed. ESAM's SWP is checked one
level lower: a TorchDispatchMode sees which convolution backward kernels compute weight gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import optimizers

BATCH = 7  # odd: ceil(gamma * B) differs from floor and from B / 2
CLASSES = 4
CONV_WIDTHS = (3, 4, 5, 6)  # distinct channel counts: a conv weight is identified by its shape


def convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for cin, cout in zip(CONV_WIDTHS, CONV_WIDTHS[1:], strict=False):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(CONV_WIDTHS[-1], CLASSES))


def batch(seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(BATCH, 3, 8, 8, generator=g),
        torch.randint(0, CLASSES, (BATCH,), generator=g),
        torch.arange(BATCH),
    )


@dataclass(frozen=True)
class Forward:
    net: str  # "model" or "ema"
    samples: int
    grad: bool


@dataclass
class PassLog:
    forwards: list[Forward] = field(default_factory=list)
    backwards: list[tuple[str, int]] = field(default_factory=list)  # (net, samples the gradient covers)
    optimizer_steps: int = 0

    def watch(self, net: nn.Module, label: str) -> None:
        def on_forward(module: nn.Module, inputs: Any, output: Tensor) -> None:
            self.forwards.append(Forward(label, output.shape[0], torch.is_grad_enabled()))
            if output.requires_grad:
                # Fires whenever autograd computes d(loss)/d(output): .backward() and autograd.grad alike.
                output.register_hook(lambda grad: self.backwards.append((label, grad.shape[0])))

        net.register_forward_hook(on_forward)

    def clear(self) -> None:
        self.forwards.clear()
        self.backwards.clear()
        self.optimizer_steps = 0


def make(name: str, *, epoch: int, **hparams: Any) -> tuple[optimizers.Method, PassLog]:
    model = convnet()
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if name == "saf":
        hparams = {"num_samples": BATCH, "num_classes": CLASSES, **hparams}
    method = optimizers.create(name, model, base, **hparams)
    method.set_epoch(epoch)
    log = PassLog()
    log.watch(model, "model")
    if name == "mesa":
        log.watch(method.ema, "ema")

    def count_step(*_: Any) -> None:
        log.optimizer_steps += 1

    base.register_step_post_hook(count_step)
    return method, log


def passes(method: optimizers.Method, log: PassLog, steps: int = 3) -> list[PassLog]:
    """The log of each of `steps` consecutive steps (every step must look the same)."""
    x, y, idx = batch()
    logs = []
    for _ in range(steps):
        log.clear()
        method.step(x, y, idx)
        logs.append(PassLog(list(log.forwards), list(log.backwards), log.optimizer_steps))
    return logs


ONE_PASS = ([Forward("model", BATCH, True)], [("model", BATCH)])


@pytest.mark.parametrize(
    ("name", "epoch", "hparams"),
    [
        ("sgd", 0, {}),
        ("saf", 0, {}),  # before e_start: SGD's step while the store fills
        ("saf", 5, {}),  # active: the sharpness term is a store lookup, not a pass
        ("mesa", 0, {}),  # before e_start: no EMA forward
    ],
)
def test_single_pass_methods(name: str, epoch: int, hparams: dict) -> None:
    method, log = make(name, epoch=epoch, **hparams)
    for step in passes(method, log):
        assert (step.forwards, step.backwards) == ONE_PASS
        assert step.optimizer_steps == 1


def test_mesa_active_adds_one_no_grad_ema_forward() -> None:
    method, log = make("mesa", epoch=5)
    assert method.active
    for step in passes(method, log):
        assert step.forwards == [Forward("model", BATCH, True), Forward("ema", BATCH, False)]
        assert step.backwards == [("model", BATCH)]  # the EMA output is a constant target
        assert step.optimizer_steps == 1


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_two_full_passes(adaptive: bool) -> None:
    method, log = make("sam", epoch=0, adaptive=adaptive)
    for step in passes(method, log):
        assert step.forwards == [Forward("model", BATCH, True)] * 2
        assert step.backwards == [("model", BATCH)] * 2
        assert step.optimizer_steps == 1


@pytest.mark.parametrize("gamma", [0.5, 0.3, 0.01])
def test_esam_second_pass_sees_ceil_gamma_b_samples(gamma: float) -> None:
    # beta = 1: every tensor is perturbed, so the ascent backward always runs (isolates SDS).
    method, log = make("esam", epoch=0, beta=1.0, gamma=gamma)
    k = max(1, math.ceil(gamma * BATCH))
    assert k < BATCH
    for step in passes(method, log):
        assert step.forwards == [
            Forward("model", BATCH, True),  # clean pass
            Forward("model", BATCH, False),  # selection: L_i(w + e), no graph
            Forward("model", k, True),
        ]  # descent pass on the selected samples
        assert step.backwards == [("model", BATCH), ("model", k)]
        assert step.optimizer_steps == 1


def test_esam_gamma_one_is_two_full_passes_without_selection() -> None:
    method, log = make("esam", epoch=0, beta=1.0, gamma=1.0)
    for step in passes(method, log):
        assert step.forwards == [Forward("model", BATCH, True)] * 2
        assert step.backwards == [("model", BATCH)] * 2


# ---- ESAM's SWP: unselected tensors get no weight-gradient kernel in the ascent pass -------------
class ConvBackwardLog(TorchDispatchMode):
    """Records every aten.convolution_backward: (weight shape, weight-grad computed?, gradient batch)."""

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        if func is torch.ops.aten.convolution_backward.default:
            grad_output, weight, output_mask = args[0], args[2], args[-1]
            self.events.append(
                ("conv_backward", tuple(weight.shape), bool(output_mask[1]), grad_output.shape[0])
            )
        return func(*args, **kwargs)


def conv_weight_shapes(tensors: list[Tensor]) -> set[tuple[int, ...]]:
    return {tuple(t.shape) for t in tensors if t.ndim == 4}


def traced_step(method: optimizers.Method, events: list) -> list[list[tuple]]:
    """The step's convolution backward events, split into passes at each forward with autograd on."""
    x, y, idx = batch()
    events.clear()
    with ConvBackwardLog(events):
        method.step(x, y, idx)
    passes_: list[list[tuple]] = []
    for event in events:
        if event[0] == "forward":
            if event[1]:
                passes_.append([])
        else:
            passes_[-1].append(event)
    return passes_


def watch_forwards(model: nn.Module, events: list) -> None:
    model.register_forward_hook(lambda m, i, o: events.append(("forward", torch.is_grad_enabled())))


ALL_CONVS = {(cout, cin, 3, 3) for cin, cout in zip(CONV_WIDTHS, CONV_WIDTHS[1:], strict=False)}


def test_sgd_computes_every_conv_weight_gradient() -> None:
    """The probe itself: a full backward computes the weight gradient of every convolution."""
    method, _ = make("sgd", epoch=0)
    events: list = []
    watch_forwards(method.model, events)
    (only,) = traced_step(method, events)
    assert {e[1] for e in only if e[2]} == ALL_CONVS


def test_esam_swp_skips_weight_gradients_of_unperturbed_tensors() -> None:
    method, _ = make("esam", epoch=0, beta=0.5, gamma=0.5, seed=3)
    events: list = []
    watch_forwards(method.model, events)
    chosen: list[list[Tensor]] = []
    draw = method.ascent_params

    def spy(params: list[nn.Parameter]) -> tuple[list[nn.Parameter], float]:
        picked, beta = draw(params)
        chosen.append(picked)
        return picked, beta

    method.ascent_params = spy  # type: ignore[method-assign]
    k = math.ceil(0.5 * BATCH)
    strict_subsets = 0
    for _ in range(8):
        ascent, descent = traced_step(method, events)
        perturbed = conv_weight_shapes(chosen[-1])
        computed = {shape for _, shape, weight_grad, _ in ascent if weight_grad}
        # Exactly the perturbed conv weights get a weight-gradient kernel in the ascent pass:
        # a full backward (loss.backward() over all parameters) would compute all of them.
        assert computed == perturbed
        strict_subsets += bool(perturbed) and perturbed != ALL_CONVS
        # The descent pass computes every weight gradient, over the k selected samples only.
        assert {shape for _, shape, weight_grad, _ in descent if weight_grad} == ALL_CONVS
        assert {samples for *_, samples in descent} == {k}
    assert strict_subsets >= 2, "the draw never perturbed a strict, non-empty subset of the convolutions"
