"""Checkpoint round trip: k steps, save through torch.save/torch.load(weights_only=True), restore into fresh
objects, continue; the result must be bit-identical to an uninterrupted run."""

from __future__ import annotations

import io

import pytest
import torch

import optimizers

from .harness import N, schedule
from .tiny import (
    CLASSES,
    MODELS,
    assert_same_optimizer_state,
    assert_same_state,
    base_optimizer,
    data,
    optimizer_state,
)

SAF = {"num_samples": N, "num_classes": CLASSES}
CASES = {
    "sgd": ("sgd", {}),
    "sam": ("sam", {"rho": 0.2}),
    "asam-bn-both": ("sam", {"rho": 0.5, "adaptive": True, "bn_update": "both"}),
    "esam": ("esam", {"rho": 0.2, "beta": 0.5, "gamma": 0.5, "seed": 1}),
    "saf": ("saf", {**SAF, "e_tilde": 2, "e_start": 2, "lam": 0.5, "tau": 2.0}),  # fp16 store (default)
    "saf-f32": ("saf", {**SAF, "e_tilde": 1, "e_start": 1, "lam": 0.5, "tau": 2.0, "store_dtype": "float32"}),
    "mesa": ("mesa", {"e_start": 2, "lam": 0.8, "tau": 2.0, "ema_decay": 0.8}),
    "sam-fp16": ("sam", {"rho": 0.2, "precision": "fp16"}),
    "mesa-fp16": ("mesa", {"e_start": 1, "ema_decay": 0.8, "precision": "fp16"}),
    "gsam": ("gsam", {"rho": 0.3, "rho_min": 0.1, "alpha": 0.5, "lr_max": 0.2, "lr_min": 0.0}),
    "looksam": ("looksam", {"rho": 0.3, "k": 3, "alpha": 0.7}),  # splits at 4 and 7: resumes on reuse steps
    "looksam-fp16": ("looksam", {"rho": 0.3, "k": 2, "precision": "fp16"}),
}
EPOCHS = 4


def _plan_split(split_step: int):
    steps = [(epoch, idx) for epoch, batches in schedule(EPOCHS) for idx in batches]
    return steps[:split_step], steps[split_step:]


def _run_steps(method, x, y, steps, last_epoch=None):
    for epoch, idx in steps:
        if epoch != last_epoch:
            method.set_epoch(epoch)
            last_epoch = epoch
        method.step(x[idx], y[idx], idx)
    return last_epoch


def _build(name, hp, opt_kind, seed):
    model = MODELS["convbn"](seed=seed)
    opt = base_optimizer(opt_kind, model)
    return model, opt, optimizers.create(name, model, opt, **hp)


@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
@pytest.mark.parametrize("split_step", [4, 7])  # mid-epoch, both before and after SAF/MESA activation
@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(
    case: str, split_step: int, opt_kind: str
) -> None:
    name, hp = CASES[case]
    x, y = data("convbn", N)
    first, rest = _plan_split(split_step)

    model, opt, method = _build(name, hp, opt_kind, seed=0)
    _run_steps(method, x, y, first + rest)

    model_a, _, method_a = _build(name, hp, opt_kind, seed=0)
    last_epoch = _run_steps(method_a, x, y, first)
    buffer = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "method": method_a.state_dict()}, buffer)
    del model_a, method_a
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    # Fresh objects, from a different initialisation (and, for ESAM, a different seed): everything that
    # matters has to come from the checkpoint.
    fresh_hp = {**hp, "seed": 99} if name == "esam" else hp
    model_b = MODELS["convbn"](seed=5)
    opt_b = base_optimizer(opt_kind, model_b)
    method_b = optimizers.create(name, model_b, opt_b, **fresh_hp)
    model_b.load_state_dict(checkpoint["model"])
    method_b.load_state_dict(checkpoint["method"])
    assert method_b.epoch == last_epoch
    # The loop resumes mid-epoch without calling set_epoch again.
    _run_steps(method_b, x, y, rest, last_epoch=last_epoch)

    assert_same_state(model_b, model, exact=True)
    assert_same_optimizer_state(optimizer_state(opt_b), optimizer_state(opt))
    if name == "mesa":
        assert_same_state(method_b.ema, method.ema, exact=True)
    if name == "saf":
        assert torch.equal(method_b.store.table, method.store.table)
    if name == "looksam":
        assert method_b.steps == method.steps
        assert all(torch.equal(a, b) for a, b in zip(method_b.g_v, method.g_v, strict=True))
    if method.scaler is not None:
        assert method_b.scaler.get_scale() == method.scaler.get_scale()


@pytest.mark.parametrize("case", ["esam", "saf", "mesa"])
def test_resume_without_loading_the_method_state_would_differ(case: str) -> None:
    """Guard for the test above: the method's own state (draws, store, EMA) does matter."""
    name, hp = CASES[case]
    x, y = data("convbn", N)
    first, rest = _plan_split(7)
    model, _, method = _build(name, hp, "sgd", seed=0)
    _run_steps(method, x, y, first + rest)

    model_a, opt_a, method_a = _build(name, hp, "sgd", seed=0)
    last_epoch = _run_steps(method_a, x, y, first)
    model_b = MODELS["convbn"](seed=5)
    opt_b = base_optimizer("sgd", model_b)
    method_b = optimizers.create(name, model_b, opt_b, **hp)
    model_b.load_state_dict(model_a.state_dict())
    opt_b.load_state_dict(opt_a.state_dict())
    method_b.set_epoch(last_epoch)
    _run_steps(method_b, x, y, rest, last_epoch=last_epoch)
    diff = max(
        (a - b).abs().max().item() for a, b in zip(model_b.parameters(), model.parameters(), strict=True)
    )
    assert diff > 1e-6


def test_state_dict_of_another_method_is_rejected() -> None:
    model = MODELS["mlp"]()
    sam = optimizers.create("sam", model, base_optimizer("sgd", model))
    sgd = optimizers.create("sgd", model, base_optimizer("sgd", model))
    with pytest.raises(ValueError, match="sam"):
        sgd.load_state_dict(sam.state_dict())
