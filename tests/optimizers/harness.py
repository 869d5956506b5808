"""Drive a method and the matching reference over the same shuffled epochs."""

from __future__ import annotations

import torch

import optimizers

from . import reference as ref
from .tiny import assert_same_state, epoch_order

N, BATCH = 24, 8  # three batches per epoch


def schedule(epochs: int, n: int = N, batch: int = BATCH, seed: int = 7):
    return [(epoch, epoch_order(n, batch, epoch, seed)) for epoch in range(epochs)]


def run_method(method: optimizers.Method, x, y, plan, with_indices: bool = True):
    outs = []
    for epoch, batches in plan:
        method.set_epoch(epoch)
        for idx in batches:
            out = method.step(x[idx], y[idx], idx if with_indices else None)
            outs.append((epoch, idx, out.loss, out.logits))
    return outs


class Reference:
    """The reference counterpart of optimizers.create(name, ...)."""

    def __init__(self, name: str, model, opt, **hp) -> None:
        self.name, self.model, self.opt = name, model, opt
        self.ls = hp.pop("label_smoothing", 0.0)
        self.bn_update = hp.pop("bn_update", "clean")
        self.hp = hp
        if name == "esam":
            self.esam = ref.RefESAM(hp.get("seed", 0), hp.get("beta", 0.5))
        if name == "saf":
            self.saf = ref.RefSAF(
                hp.get("lam", 0.3), hp.get("tau", 5.0), hp.get("e_tilde", 3), hp.get("e_start", 5)
            )
        if name == "mesa":
            self.mesa = ref.RefMESA(
                model,
                hp.get("lam", 0.8),
                hp.get("tau", 5.0),
                hp.get("e_start", 5),
                hp.get("ema_decay", 0.9998),
            )
        self.chosen: list[list[int]] = []

    def step(self, x, y, idx, epoch):
        m, o, hp = self.model, self.opt, self.hp
        if self.name == "sgd":
            return ref.sgd_step(m, o, x, y, label_smoothing=self.ls)
        if self.name == "sam":
            loss, logits, _ = ref.sam_step(
                m,
                o,
                x,
                y,
                rho=hp.get("rho", 0.05),
                adaptive=hp.get("adaptive", False),
                label_smoothing=self.ls,
                bn_update=self.bn_update,
            )
            return loss, logits
        if self.name == "esam":
            loss, logits, chosen = ref.sam_step(
                m,
                o,
                x,
                y,
                rho=hp.get("rho", 0.05),
                label_smoothing=self.ls,
                bn_update=self.bn_update,
                esam=self.esam,
                gamma=hp.get("gamma", 0.5),
            )
            self.chosen.append(chosen)
            return loss, logits
        if self.name == "saf":
            return self.saf.step(m, o, x, y, idx, epoch, label_smoothing=self.ls)
        if self.name == "mesa":
            return self.mesa.step(m, o, x, y, epoch, label_smoothing=self.ls)
        raise ValueError(self.name)

    def run(self, x, y, plan):
        outs = []
        for epoch, batches in plan:
            for idx in batches:
                loss, logits = self.step(x[idx], y[idx], idx, epoch)
                outs.append((epoch, idx, loss, logits))
        return outs


def assert_same_outputs(actual, expected, atol: float = 1e-5) -> None:
    assert len(actual) == len(expected)
    for (ea, ia, la, za), (ee, ie, le, ze) in zip(actual, expected, strict=True):
        assert ea == ee and torch.equal(ia, ie)
        assert la.shape == () and not la.requires_grad and not za.requires_grad
        torch.testing.assert_close(la.float(), le.float(), atol=atol, rtol=0)
        torch.testing.assert_close(za.float(), ze.float(), atol=atol, rtol=0)


def assert_same_outputs_exact(actual, expected) -> None:
    assert len(actual) == len(expected)
    for (ea, ia, la, za), (ee, ie, le, ze) in zip(actual, expected, strict=True):
        assert ea == ee and torch.equal(ia, ie) and torch.equal(la, le) and torch.equal(za, ze)


def assert_matches_reference(method: optimizers.Method, reference: Reference, model, ref_model,
                             actual, expected) -> None:
    """Weights, per-step outputs and (for MESA) the EMA model equal the reference implementation's."""
    assert_same_state(model, ref_model, atol=1e-6)
    assert_same_outputs(actual, expected)
    if reference.name == "mesa":
        assert_same_state(method.ema, reference.mesa.ema, atol=1e-6)
