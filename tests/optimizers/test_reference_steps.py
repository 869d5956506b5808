"""Every method against a hand-written reference step (tests/optimizers/reference.py), on a tiny MLP
and a tiny conv net with BatchNorm: parameters, BN buffers, losses and logits after several epochs."""

from __future__ import annotations

import pytest

import optimizers

from .harness import N, Reference, assert_matches_reference, run_method, schedule
from .tiny import CLASSES, MODELS, base_optimizer, data, twin

SAF = {"num_samples": N, "num_classes": CLASSES, "store_dtype": "float32"}
CASES = {
    "sgd": ("sgd", {}),
    "sam": ("sam", {"rho": 0.05}),
    "sam-big-rho": ("sam", {"rho": 0.5}),
    "asam": ("sam", {"rho": 0.5, "adaptive": True}),
    "sam-bn-both": ("sam", {"rho": 0.2, "bn_update": "both"}),
    "sam-smoothing": ("sam", {"rho": 0.1, "label_smoothing": 0.1}),
    "esam": ("esam", {"rho": 0.2, "beta": 0.5, "gamma": 0.5, "seed": 3}),
    "esam-bn-both": ("esam", {"rho": 0.2, "beta": 0.7, "gamma": 0.75, "seed": 1, "bn_update": "both"}),
    "esam-one-sample": ("esam", {"rho": 0.2, "beta": 0.9, "gamma": 0.01, "seed": 2}),
    "saf": ("saf", {**SAF, "lam": 0.5, "tau": 2.0, "e_tilde": 1, "e_start": 1}),
    "saf-etilde2": (
        "saf",
        {**SAF, "lam": 1.0, "tau": 3.0, "e_tilde": 2, "e_start": 0, "label_smoothing": 0.1},
    ),
    "mesa": ("mesa", {"lam": 0.8, "tau": 2.0, "e_start": 1, "ema_decay": 0.9}),
    "mesa-smoothing": (
        "mesa",
        {"lam": 2.0, "tau": 1.5, "e_start": 2, "ema_decay": 0.5, "label_smoothing": 0.2},
    ),
}
EPOCHS = 4  # 12 steps; saf/mesa are active for the last 2-3 epochs


def _compare(case: str, model_kind: str, opt_kind: str) -> None:
    name, hp = CASES[case]
    model = MODELS[model_kind]()
    ref_model = twin(model)
    x, y = data(model_kind, N)
    plan = schedule(EPOCHS)

    method = optimizers.create(name, model, base_optimizer(opt_kind, model), **hp)
    reference = Reference(name, ref_model, base_optimizer(opt_kind, ref_model), **hp)
    actual = run_method(method, x, y, plan)
    expected = reference.run(x, y, plan)

    assert_matches_reference(method, reference, model, ref_model, actual, expected)


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_sgd_momentum(case: str, model_kind: str) -> None:
    _compare(case, model_kind, "sgd")


@pytest.mark.parametrize("case", ["sgd", "sam", "asam", "esam", "saf", "mesa"])
def test_matches_reference_adamw(case: str) -> None:
    _compare(case, "convbn", "adamw")


def test_reference_trajectory_terms_are_active() -> None:
    """Guard against a vacuous comparison: in these cases the trajectory term does move the weights."""
    for case in ("saf", "mesa"):
        name, hp = CASES[case]
        x, y = data("mlp", N)
        plan = schedule(EPOCHS)
        with_term, without = MODELS["mlp"](), MODELS["mlp"]()
        run_method(optimizers.create(name, with_term, base_optimizer("sgd", with_term), **hp), x, y, plan)
        run_method(
            optimizers.create(name, without, base_optimizer("sgd", without), **{**hp, "lam": 0.0}), x, y, plan
        )
        diff = max(
            (a - b).abs().max().item()
            for a, b in zip(with_term.parameters(), without.parameters(), strict=True)
        )
        assert diff > 1e-4, case
