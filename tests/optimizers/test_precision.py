"""Mixed precision and label smoothing: fp16 skips the whole step on inf/nan in any pass, bf16 autocast runs
on CPU with finite losses, label smoothing is the formula's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import optimizers

from . import reference as ref
from .tiny import (
    CLASSES,
    MODELS,
    assert_same_optimizer_state,
    assert_same_state,
    base_optimizer,
    data,
    model_state,
    optimizer_state,
    twin,
)

SAF = {"num_samples": 16, "num_classes": CLASSES}


class Injector:
    """Forward hook on the last layer: on chosen passes of one step, makes the output (forward) or its
    gradient (backward) non-finite."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.passes: set[int] = set()
        self.where = "forward"
        self.count = 0
        layer.register_forward_hook(self)

    def arm(self, passes: set[int], where: str) -> None:
        self.passes, self.where, self.count = passes, where, 0

    def __call__(self, module, args, output):
        self.count += 1
        if self.count not in self.passes:
            return None
        if self.where == "forward":
            return output + float("inf")
        output.register_hook(lambda g: g * float("inf"))
        return None


CASES = [  # name, hparams, passes (1-based forward calls of the model within the step), where
    ("sgd", {}, {1}, "forward"),
    ("sgd", {}, {1}, "backward"),
    ("sam", {"rho": 0.1}, {1}, "forward"),  # ascent pass
    ("sam", {"rho": 0.1}, {1}, "backward"),
    ("sam", {"rho": 0.1}, {2}, "forward"),  # second pass
    ("sam", {"rho": 0.1}, {2}, "backward"),
    ("esam", {"rho": 0.1, "beta": 0.6, "gamma": 0.5}, {1}, "backward"),
    ("esam", {"rho": 0.1, "beta": 0.6, "gamma": 0.5}, {3}, "forward"),  # pass 2 is SDS's no-grad pass
    ("esam", {"rho": 0.1, "beta": 0.6, "gamma": 0.5}, {3}, "backward"),
    ("mesa", {"e_start": 0, "ema_decay": 0.8}, {1}, "forward"),
    ("mesa", {"e_start": 0, "ema_decay": 0.8}, {1}, "backward"),
    ("saf", {**SAF, "e_tilde": 1, "e_start": 1}, {1}, "backward"),
    ("gsam", {"rho": 0.1}, {1}, "backward"),
    ("gsam", {"rho": 0.1}, {2}, "forward"),
    ("gsam", {"rho": 0.1}, {2}, "backward"),
    ("looksam", {"rho": 0.1, "k": 2}, {1}, "backward"),  # the third step is a SAM step
    ("looksam", {"rho": 0.1, "k": 2}, {2}, "backward"),
    ("looksam", {"rho": 0.1, "k": 3}, {1}, "forward"),  # the third step reuses g_v
    ("looksam", {"rho": 0.1, "k": 3}, {1}, "backward"),
]


@pytest.mark.parametrize("name,hp,passes,where", CASES)
def test_fp16_inf_in_any_pass_skips_the_whole_step(name, hp, passes, where) -> None:
    model = MODELS["mlp"]()
    x, y = data("mlp", 16)
    idx = torch.arange(16)
    opt = base_optimizer("sgd", model)
    method = optimizers.create(
        name, model, opt, precision="fp16", grad_scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10), **hp
    )
    injector = Injector(model[-1])
    for epoch in range(2):  # two normal steps: momentum buffers exist, SAF is active from epoch 1
        method.set_epoch(epoch)
        method.step(x, y, idx)
    weights, state = model_state(model), optimizer_state(opt)
    ema = model_state(method.ema) if name == "mesa" else None
    scale = method.scaler.get_scale()

    injector.arm(passes, where)
    method.step(x, y, idx)
    assert injector.count >= max(passes)  # the injection did happen
    assert_same_state(model, weights, exact=True)
    assert_same_optimizer_state(optimizer_state(opt), state)
    if ema is not None:
        assert_same_state(method.ema, ema, exact=True)
    assert method.scaler.get_scale() == scale / 2

    injector.arm(set(), where)
    out = method.step(x, y, idx)  # and training goes on
    assert torch.isfinite(out.loss)
    assert any(not torch.equal(p, weights[k]) for k, p in model.named_parameters())


@pytest.mark.parametrize(
    "name,hp",
    [
        ("sgd", {}),
        ("sam", {"rho": 0.1}),
        ("mesa", {"e_start": 0, "ema_decay": 0.5}),
        ("saf", {**SAF, "e_tilde": 1, "e_start": 1, "store_dtype": "float32"}),
    ],
)
def test_fp16_steps_match_the_fp32_reference_closely(name, hp) -> None:
    """The scaler must unscale every pass: a scaled gradient would be 2**16 times too large."""
    model = MODELS["mlp"]()
    ref_model, start = twin(model), model_state(model)
    x, y = data("mlp", 16)
    idx = torch.arange(16)
    method = optimizers.create(name, model, base_optimizer("sgd", model), precision="fp16", **hp)
    ref_opt = base_optimizer("sgd", ref_model)
    reference = None
    if name == "mesa":
        reference = ref.RefMESA(ref_model, 0.8, 5.0, 0, 0.5)
    if name == "saf":
        reference = ref.RefSAF(0.3, 5.0, 1, 1)
    for epoch in range(3):
        method.set_epoch(epoch)
        method.step(x, y, idx)
        if name == "sgd":
            ref.sgd_step(ref_model, ref_opt, x, y)
        elif name == "sam":
            ref.sam_step(ref_model, ref_opt, x, y, rho=0.1)
        elif name == "mesa":
            reference.step(ref_model, ref_opt, x, y, epoch)
        else:
            reference.step(ref_model, ref_opt, x, y, idx, epoch)
    moved = max((ref_model.state_dict()[k] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-2
    assert_same_state(model, ref_model, atol=2e-3)


def test_fp16_ascent_pass_skip_leaves_the_scaler_as_a_grad_scaler_skip_would() -> None:
    """An inf found in SAM's ascent pass must back the scale off *and* reset the growth counter, as
    GradScaler.update() does for an inf found in the second pass. Otherwise the scale grows back after
    growth_interval - 1 good steps instead of growth_interval."""
    scales = {}
    for skipped_pass in (1, 2):
        model = MODELS["mlp"]()
        x, y = data("mlp", 16)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
        method = optimizers.create(
            "sam", model, base_optimizer("sgd", model), precision="fp16", grad_scaler=scaler
        )
        injector = Injector(model[-1])
        method.step(x, y)  # good: growth counter 1
        injector.arm({skipped_pass}, "backward")
        method.step(x, y)  # skipped: scale 512, counter 0
        injector.arm(set(), "backward")
        method.step(x, y)  # good: counter 1, no growth yet
        scales[skipped_pass] = scaler.get_scale()
    assert scales[2] == 512.0
    assert scales[1] == scales[2]


@pytest.mark.parametrize(
    "name,hp",
    [
        ("sgd", {}),
        ("sam", {}),
        ("sam", {"adaptive": True, "rho": 0.5}),
        ("esam", {}),
        ("saf", {**SAF, "e_tilde": 1, "e_start": 1}),
        ("mesa", {"e_start": 1}),
    ],
)
@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_bf16_autocast_runs_on_cpu_with_finite_losses(name, hp, model_kind) -> None:
    model = MODELS[model_kind]()
    fp32 = twin(model)
    x, y = data(model_kind, 16)
    idx = torch.arange(16)
    method = optimizers.create(name, model, base_optimizer("sgd", model), precision="bf16", **hp)
    fp32_method = optimizers.create(name, fp32, base_optimizer("sgd", fp32), **hp)
    for epoch in range(3):
        method.set_epoch(epoch)
        fp32_method.set_epoch(epoch)
        out = method.step(x, y, idx)
        out32 = fp32_method.step(x, y, idx)
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        assert torch.isfinite(out.logits).all()
        assert out.loss.item() == pytest.approx(out32.loss.item(), abs=3e-2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "name,hp",
    [
        ("sgd", {}),
        ("sam", {}),
        ("esam", {"gamma": 0.5}),
        ("saf", {**SAF, "e_tilde": 1, "e_start": 1}),
        ("mesa", {"e_start": 1}),
    ],
)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_label_smoothing_changes_the_loss_as_the_formula_does(name, hp, smoothing) -> None:
    model = MODELS["mlp"]()
    x, y = data("mlp", 16)
    method = optimizers.create(name, model, base_optimizer("sgd", model), label_smoothing=smoothing, **hp)
    for epoch in range(2):
        method.set_epoch(epoch)
        out = method.step(x, y, torch.arange(16))
        by_formula = ref.ref_ce(out.logits, y, smoothing).mean()
        assert out.loss.item() == pytest.approx(by_formula.item(), abs=1e-6)
        torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y, label_smoothing=smoothing))
        if smoothing:
            assert abs(out.loss.item() - ref.ref_ce(out.logits, y, 0.0).mean().item()) > 1e-3


def test_sgd_label_smoothing_gradient_matches_reference() -> None:
    model = MODELS["convbn"]()
    ref_model = twin(model)
    x, y = data("convbn", 16)
    method = optimizers.create("sgd", model, base_optimizer("sgd", model), label_smoothing=0.3)
    ref_opt = base_optimizer("sgd", ref_model)
    for _ in range(3):
        method.step(x, y)
        ref.sgd_step(ref_model, ref_opt, x, y, label_smoothing=0.3)
    assert_same_state(model, ref_model, atol=1e-6)


def test_fp16_creates_its_own_scaler_and_fp32_has_none() -> None:
    model = MODELS["mlp"]()
    assert optimizers.create("sam", model, base_optimizer("sgd", model), precision="fp16").scaler is not None
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    method = optimizers.create(
        "sam", model, base_optimizer("sgd", model), precision="fp16", grad_scaler=scaler
    )
    assert method.scaler is scaler
    assert optimizers.create("sam", model, base_optimizer("sgd", model)).scaler is None


def test_fp16_saf_step_skipped_on_forward_overflow_does_not_poison_later_targets() -> None:
    model = MODELS["mlp"]()
    x, y = data("mlp", 16)
    idx = torch.arange(16)
    method = optimizers.create(
        "saf", model, base_optimizer("sgd", model), precision="fp16", **SAF, e_tilde=1, e_start=1
    )
    injector = Injector(model[-1])
    method.set_epoch(0)
    method.step(x, y, idx)
    method.set_epoch(1)
    injector.arm({1}, "forward")
    scale = method.scaler.get_scale()
    method.step(x, y, idx)
    assert method.scaler.get_scale() == scale / 2  # skipped, as it should be
    injector.arm(set(), "forward")
    method.set_epoch(2)
    weights = model_state(model)
    method.step(x, y, idx)  # no overflow in this step: it must not be skipped
    assert method.scaler.get_scale() == scale / 2
    assert any(not torch.equal(p, weights[k]) for k, p in model.named_parameters())
