"""Invalid input raises ValueError with one line naming the bad value and what is allowed."""

from __future__ import annotations

import re

import pytest
import torch

import optimizers

from .tiny import CLASSES, MODELS, base_optimizer, data

SAF = {"num_samples": 10, "num_classes": CLASSES}


def _create(name: str, **hp):
    model = MODELS["mlp"]()
    return optimizers.create(name, model, base_optimizer("sgd", model), **hp)


def test_methods_tuple_and_registry_agree() -> None:
    assert optimizers.METHODS == ("sgd", "sam", "esam", "gsam", "looksam", "saf", "mesa")
    for name in optimizers.METHODS:
        method = _create(name, **(SAF if name == "saf" else {}))
        assert isinstance(method, optimizers.Method)
        assert method.state_dict()["method"] == name


INVALID = [
    # name, hparams, substrings the message must contain (the bad value, and what is allowed)
    ("nope", {}, ["'nope'", "sgd", "sam", "esam", "saf", "mesa"]),
    ("SAM", {}, ["'SAM'", "sam"]),
    ("sgd", {"rho": 0.1}, ["'rho'", "sgd"]),
    ("sam", {"beta": 0.5}, ["'beta'", "rho"]),
    ("sam", {"lr": 0.1}, ["'lr'"]),
    ("mesa", {"e_tilde": 3}, ["'e_tilde'"]),
    ("sam", {"rho": -0.1}, ["rho=-0.1", "[0.0, inf)"]),
    ("esam", {"rho": -1e-3}, ["rho=-0.001"]),
    ("sam", {"rho": float("nan")}, ["rho=nan"]),
    ("esam", {"beta": 0.0}, ["beta=0.0", "(0.0, 1.0]"]),
    ("esam", {"beta": 1.5}, ["beta=1.5", "(0.0, 1.0]"]),
    ("esam", {"beta": -0.5}, ["beta=-0.5"]),
    ("esam", {"gamma": 0.0}, ["gamma=0.0", "(0.0, 1.0]"]),
    ("esam", {"gamma": 1.01}, ["gamma=1.01", "(0.0, 1.0]"]),
    ("saf", {**SAF, "lam": -0.1}, ["lam=-0.1", "[0.0, inf)"]),
    ("mesa", {"lam": -1.0}, ["lam=-1.0"]),
    ("saf", {**SAF, "tau": 0.0}, ["tau=0.0", "(0.0, inf)"]),
    ("mesa", {"tau": -2.0}, ["tau=-2.0"]),
    ("saf", {**SAF, "e_tilde": 0}, ["e_tilde=0", ">= 1"]),
    ("saf", {**SAF, "e_tilde": -2}, ["e_tilde=-2"]),
    ("saf", {**SAF, "e_tilde": 1.5}, ["e_tilde=1.5"]),
    ("saf", {**SAF, "e_start": -1}, ["e_start=-1", ">= 0"]),
    ("mesa", {"e_start": -3}, ["e_start=-3", ">= 0"]),
    ("mesa", {"ema_decay": 1.0}, ["ema_decay=1.0", "[0.0, 1.0)"]),
    ("mesa", {"ema_decay": -0.1}, ["ema_decay=-0.1", "[0.0, 1.0)"]),
    ("saf", {"num_classes": CLASSES}, ["num_samples=None"]),
    ("saf", {"num_samples": 10}, ["num_classes=None"]),
    ("saf", {"num_samples": 0, "num_classes": CLASSES}, ["num_samples=0"]),
    ("saf", {**SAF, "store_dtype": "int8"}, ["store_dtype='int8'", "float16"]),
    ("sgd", {"precision": "fp8"}, ["precision='fp8'", "fp32", "bf16", "fp16"]),
    ("sam", {"bn_update": "never"}, ["bn_update='never'", "clean", "both"]),
    ("sgd", {"label_smoothing": 1.0}, ["label_smoothing=1.0"]),
    ("sgd", {"label_smoothing": -0.1}, ["label_smoothing=-0.1"]),
    ("gsam", {"rho_min": -0.01}, ["rho_min=-0.01", "[0.0, inf)"]),
    ("gsam", {"alpha": -0.1}, ["alpha=-0.1", "[0.0, inf)"]),
    ("gsam", {"lr_max": 0.1, "lr_min": 0.2}, ["lr_min=0.2", "[0.0, 0.1]"]),
    ("gsam", {"k": 2}, ["'k'", "rho_min"]),
    ("looksam", {"k": 0}, ["k=0", ">= 1"]),
    ("looksam", {"k": 2.5}, ["k=2.5"]),
    ("looksam", {"alpha": -1.0}, ["alpha=-1.0"]),
    ("looksam", {"rho_min": 0.0}, ["'rho_min'"]),
]


@pytest.mark.parametrize("name,hp,must_name", INVALID, ids=[f"{n}-{sorted(h)}-{m[0]}" for n, h, m in INVALID])
def test_invalid_hyperparameters_raise_value_error_naming_the_value(name, hp, must_name) -> None:
    with pytest.raises(ValueError) as info:
        _create(name, **hp)
    message = str(info.value)
    assert "\n" not in message
    for part in must_name:
        assert part in message, f"{part!r} not in {message!r}"


VALID_EDGES = [
    ("sam", {"rho": 0.0}),
    ("esam", {"beta": 1.0, "gamma": 1.0}),
    pytest.param(
        "esam",
        {"beta": 1e-3, "gamma": 1e-3},
        id="esam-tiny-beta",
    ),
    ("saf", {**SAF, "lam": 0.0, "e_tilde": 1, "e_start": 0}),
    ("mesa", {"lam": 0.0, "e_start": 0, "ema_decay": 0.0}),
    ("sgd", {"label_smoothing": 0.0}),
    ("sgd", {"label_smoothing": 0.99}),
    ("saf", {**SAF, "store_dtype": "bfloat16"}),
    ("gsam", {"rho": 0.0, "rho_min": 0.0, "alpha": 0.0}),
    ("gsam", {"lr_max": 0.1, "lr_min": 0.1}),
    ("looksam", {"k": 1, "alpha": 0.0, "rho": 0.0}),
]


@pytest.mark.parametrize("name,hp", VALID_EDGES)
def test_boundary_values_that_the_spec_allows_are_accepted(name, hp) -> None:
    method = _create(name, **hp)
    x, y = data("mlp", 4)
    method.set_epoch(0)
    out = method.step(x, y, torch.arange(4))
    assert torch.isfinite(out.loss)


def test_base_optimizer_must_be_a_torch_optimizer() -> None:
    model = MODELS["mlp"]()
    with pytest.raises(ValueError, match="base_optimizer"):
        optimizers.create("sgd", model, object())


def test_saf_step_without_indices_raises() -> None:
    method = _create("saf", **SAF)
    x, y = data("mlp", 4)
    with pytest.raises(ValueError, match="indices"):
        method.step(x, y)


@pytest.mark.parametrize("bad,epoch", [(10, 0), (-1, 0), (25, 3), (10, 6)])
def test_saf_index_outside_range_raises_naming_index_and_range(bad: int, epoch: int) -> None:
    method = _create("saf", **SAF, e_tilde=2, e_start=2)
    x, y = data("mlp", 4)
    method.set_epoch(epoch)
    before = [p.detach().clone() for p in method.model.parameters()]
    with pytest.raises(ValueError) as info:
        method.step(x, y, torch.tensor([0, 3, bad, 9]))
    message = str(info.value)
    assert str(bad) in message and re.search(r"\[0, 10\)", message), message
    # nothing was trained on the bad batch
    assert all(torch.equal(a, b) for a, b in zip(before, method.model.parameters(), strict=True))


def test_set_epoch_rejects_negative_epochs() -> None:
    method = _create("sgd")
    with pytest.raises(ValueError, match="epoch=-1"):
        method.set_epoch(-1)


def test_method_hparams_lists_each_methods_own_hyperparameters() -> None:
    assert optimizers.method_hparams("sam") == {"rho": 0.05, "adaptive": False}
    esam = optimizers.method_hparams("esam")
    assert {k: esam[k] for k in ("rho", "beta", "gamma")} == {"rho": 0.05, "beta": 0.5, "gamma": 0.5}
    assert "seed" not in esam and optimizers.method_spec("esam").draws_random  # derived from the run seed
    saf = optimizers.method_hparams("saf")
    assert {k: saf[k] for k in ("lam", "tau", "e_tilde", "e_start", "store_dtype")} == {
        "lam": 0.3,
        "tau": 5.0,
        "e_tilde": 3,
        "e_start": 5,
        "store_dtype": "float16",
    }
    assert optimizers.method_hparams("mesa") == {"lam": 0.8, "tau": 5.0, "e_start": 5, "ema_decay": 0.9998}


def test_method_hparams_of_sgd_is_empty() -> None:
    """method_hparams promises 'the method's own hyperparameters ... (not the shared ones like precision)'."""
    assert optimizers.method_hparams("sgd") == {}
    for name in optimizers.METHODS:
        assert "precision" not in optimizers.method_hparams(name)
