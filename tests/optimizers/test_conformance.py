"""The conformance check (optimizers.testing) on every registered method, with the float64 loops of
reference.py and test_gsam_looksam.py (written from the formulas) as the float64 references; and the check
itself against toy methods that each break one contract, so that every check is seen to fail."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

import optimizers
from optimizers.testing import check_method, conformance

from .harness import Reference
from .test_gsam_looksam import RefLookSAM, ref_gsam_step, rho_schedule


class _GSAMReference:
    def __init__(self, model, opt, hp: dict[str, Any]) -> None:
        self.model, self.opt, self.hp = model, opt, hp

    def step(self, x, y, idx, epoch) -> None:
        hp = self.hp
        rho_t = rho_schedule(self.opt.param_groups[0]["lr"], hp["rho"], hp["rho_min"], hp["lr_max"], hp["lr_min"])
        ref_gsam_step(self.model, self.opt, x, y, rho_t=rho_t, alpha=hp["alpha"])


class _LookSAMReference:
    def __init__(self, model, opt, hp: dict[str, Any]) -> None:
        self.model, self.opt, self.ref = model, opt, RefLookSAM(hp["rho"], hp["k"], hp["alpha"])

    def step(self, x, y, idx, epoch) -> None:
        self.ref.step(self.model, self.opt, x, y)


REFERENCES = {name: (lambda model, opt, hp, name=name: Reference(name, model, opt, **hp))
              for name in ("sgd", "sam", "esam", "saf", "mesa")}
REFERENCES.update(gsam=_GSAMReference, looksam=_LookSAMReference)


def test_every_built_in_method_has_a_float64_reference() -> None:
    assert set(REFERENCES) == set(optimizers.METHODS)


@pytest.mark.parametrize("name", optimizers.methods())
def test_every_registered_method_passes_the_conformance_check(name: str) -> None:
    check_method(name, reference=REFERENCES.get(name))


def test_a_wrong_reference_is_caught_at_float64_precision() -> None:
    """The float64 comparison is tight enough to see SAM's radius off by one part in a million."""
    def off(model, opt, hp):
        return Reference("sam", model, opt, **{**hp, "rho": hp["rho"] * (1 + 1e-6)})

    failures = conformance("sam", reference=off, only=("dtypes",))["dtypes"]
    assert len(failures) == 1 and "float64 reference" in failures[0] and "tolerance 1e-10" in failures[0]


# ---- toy methods, each breaking one contract ---------------------------------------------------------------
class _Toy(optimizers.Method):
    spec = optimizers.MethodSpec(name="toy", summary="a test's toy", paper="none")


def _toy(name: str, base: type = _Toy, **attrs: Any) -> type:
    spec = attrs.pop("spec", None) or optimizers.MethodSpec(name=name, summary="toy", paper="none")
    return type(f"Toy_{name}", (base,), {"name": name, "spec": spec, **attrs})


@pytest.fixture
def toy() -> Iterator:
    names = []

    def register(cls: type) -> str:
        optimizers.register_method(cls)
        names.append(cls.name)
        return cls.name

    yield register
    for name in names:
        optimizers.unregister_method(name)


def _left_perturbed(self, inputs, targets, indices=None):
    out = optimizers.Method.step(self, inputs, targets, indices)
    with torch.no_grad():
        for p in self.trainable_params():
            p.add_(1e-3)
    return out


class _Counter(optimizers.Method):
    """Adds a step counter's worth to the loss but keeps the counter out of state_dict."""

    def __init__(self, model, base_optimizer, **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
        self.count = 0

    def regularizer(self, logits: Tensor, inputs, targets, indices) -> Tensor:
        self.count += 1
        return 1e-3 * self.count * logits.square().mean()


class _Float32Loss(optimizers.Method):
    def criterion(self, logits, targets, reduction="mean"):
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction=reduction)


class _Unseeded(optimizers.Method):
    def regularizer(self, logits, inputs, targets, indices):
        return 1e-2 * (logits * torch.randn_like(logits)).mean()


class _Unchecked(optimizers.Method):
    def __init__(self, model, base_optimizer, *, width: float = 1.0, **common: Any) -> None:
        super().__init__(model, base_optimizer, **common)
        self.width = width  # never checked against the spec's range


class _EagerState(_Counter):
    """Counts every step, also the fp16-skipped ones, and saves the count."""

    def state_dict(self):
        return {**super().state_dict(), "count": self.count}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.count = state["count"]


BROKEN = {  # contract -> (toy class, substring of the one failure line)
    "restore": (_toy("perturbs", step=_left_perturbed), "moved by"),
    "resume": (_toy("forgets", _Counter), "resumed after step 1"),
    "passes": (_toy("miscounts", spec=optimizers.MethodSpec(name="miscounts", summary="t", paper="t", passes=2.0)),
               "the spec says 2"),
    "dtypes": (_toy("narrows", _Float32Loss), "float64 model computed below float64"),
    "seed": (_toy("unseeded", _Unseeded), "same seed"),
    "spec": (_toy("unchecked", _Unchecked, spec=optimizers.MethodSpec(
        name="unchecked", summary="t", paper="t",
        hparams=(optimizers.HParam("width", float, 1.0, "w", low=0.0, low_open=True),))), "width="),
    "fp16 skip": (_toy("eager", _EagerState), "method state changed at count"),
}


@pytest.mark.parametrize("contract", BROKEN)
def test_each_check_fails_on_a_method_that_breaks_its_contract(contract: str, toy) -> None:
    cls, expected = BROKEN[contract]
    name = toy(cls)
    results = conformance(name, only=(contract,))
    assert len(results[contract]) == 1 and expected in results[contract][0], results
    assert "\n" not in results[contract][0]


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_every_method_keeps_its_replicas_identical_and_skips_together_under_ddp() -> None:
    """One spawned gloo group checks every method (spawning costs seconds)."""
    from optimizers.testing_ddp import ddp_conformance

    results = ddp_conformance(optimizers.methods())
    assert results == {name: [] for name in optimizers.methods()}
