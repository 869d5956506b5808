"""The conformance check every method must pass, built-in or plugin, on a tiny CPU model in seconds.

    from optimizers.testing import check_method
    check_method("mymethod")                 # AssertionError listing every failure, one line each

`safbench check-method NAME` runs the same checks (and the DDP ones of optimizers.testing_ddp). A method is
run with its spec's defaults, on a 6-12-4 MLP with BatchNorm, 24 samples in batches of 8, SGD with momentum and
weight decay, the lr falling linearly from LR to LR/10 (GSAM's radius follows it), for two epochs past the
epoch its spec says it becomes active. A str hyperparameter whose choices name dtypes (SAF's store) is set to
the parameters' dtype. Checked, each failure one line naming the quantity and the tolerance:
- spec: the spec agrees with the constructor (optimizers.registry.spec_problems); bad values are refused;
- seed: two runs from the same seed are bit-identical;
- resume: stopping after any step and resuming from `state_dict` (through torch.save/load) is bit-identical;
- restore: only the base optimizer moves the weights: they are w when it starts and unchanged after it;
- passes: forward (1/3) and backward (2/3) passes counted per step, by samples, over whole cycles once active,
  equal the spec's `passes` within 0.01;
- dtypes: float64 parameters compute in float64 throughout (no op turns a float64 input into a lower precision),
  and, given a `reference` (a float64 loop written from the method's formula), match it within 1e-10;
  float32, bfloat16 parameters and fp16 autocast with a GradScaler stay within TOLERANCES of the float64 run;
- fp16 skip: inf in any pass with gradients (forward or backward), at every step of a cycle, skips the step:
  weights, base-optimizer and method state unchanged, the loss scale halved; the next step trains.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from .registry import create, method_class, spec_problems
from .testing_tiny import (
    BATCH,
    LR,
    TinyNet,
    Trainer,
    context_kwargs,
    epochs_for,
    flat,
    lr_at,
    max_diff,
    plan,
    state_differences,
    tiny_net,
    weights,
)

FLOAT64_ATOL = 1e-10
PASSES_ATOL = 0.01
# Relative to the float64 run's displacement of the parameters ||w64_T - w_0||: where lower precisions must land.
# The built-in methods reach at most 3e-6 (float32), 0.11 (bfloat16 parameters, LookSAM) and 0.011 (fp16
# autocast, LookSAM, whose g_v is a small difference of two fp16-computed gradients) on this setup.
TOLERANCES = {"float32": 1e-4, "bfloat16": 0.25, "fp16": 0.05}

# A reference: (model, base_optimizer, kwargs given to create) -> object with step(x, y, indices, epoch).
Reference = Callable[[nn.Module, torch.optim.Optimizer, dict[str, Any]], Any]



# ---- the checks -----------------------------------------------------------------------------------------------
def check_spec(name: str) -> list[str]:
    cls = method_class(name)
    failures = [f"spec: {p}" for p in spec_problems(cls)]
    for h in cls.spec.hparams:
        for bad in _bad_values(h):
            try:
                model = tiny_net()
                create(name, model, torch.optim.SGD(model.parameters(), lr=LR),
                       **{**context_kwargs(name), h.name: bad})
            except (ValueError, TypeError):
                continue
            failures.append(f"spec: {h.name}={bad!r} was accepted (allowed: {h.allowed()}; a bad value must raise "
                            "ValueError)")
            break  # one line per hyperparameter
    return failures


def _bad_values(h: Any) -> list[Any]:
    if h.type is bool:
        return ["yes"]
    if h.type is str:
        return [7] + (["not-a-choice"] if h.choices else [])
    bad: list[Any] = ["x", float("nan")]
    if h.low is not None:
        bad.append(h.low if h.low_open else h.low - 1)
    if h.high is not None:
        bad.append(h.high if h.high_open else h.high + 1)
    if h.type is int:
        bad.append(1.5 + (h.low or 0))
    return bad


def check_seed(name: str) -> list[str]:
    steps = plan(epochs_for(name))
    a, b = Trainer(name), Trainer(name)
    wa, wb = a.run(steps), b.run(steps)
    gap = max_diff(wa[-1], wb[-1])
    if gap or state_differences(a.method.state_dict(), b.method.state_dict()):
        where = state_differences(a.method.state_dict(), b.method.state_dict())
        return [f"seed: two runs from the same seed differ: weights by max |Δ| = {gap:.3g}"
                f"{', state at ' + where[0] if where else ''} (tolerance 0: bit-identical)"]
    return []


def check_resume(name: str) -> list[str]:
    steps = plan(epochs_for(name))
    expected = Trainer(name).run(steps)
    failures = []
    for split in range(1, len(steps)):
        first = Trainer(name)
        first.run(steps[:split])
        buffer = io.BytesIO()
        torch.save({"model": first.model.state_dict(), "method": first.method.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        second = Trainer(name, seed=1)  # another init: everything must come from the state_dicts
        second.model.load_state_dict(saved["model"])
        second.method.load_state_dict(saved["method"])
        second.done = split
        got = second.run(steps[split:])
        gap = max(max_diff(g, e) for g, e in zip(got, expected[split:], strict=True))
        if gap:
            failures.append(f"resume: resumed after step {split}, the weights differ from the uninterrupted run by "
                            f"max |Δ| = {gap:.3g} (tolerance 0: bit-identical)")
            break
    return failures


def check_restore(name: str) -> list[str]:
    """The base optimizer alone moves the weights: at its step they are the step's starting w, and nothing
    changes them after it."""
    trainer = Trainer(name)
    seen: dict[str, Any] = {"pre": [], "post": []}
    trainer.base.register_step_pre_hook(lambda *_: seen["pre"].append(weights(trainer.model)))
    trainer.base.register_step_post_hook(lambda *_: seen["post"].append(weights(trainer.model)))
    for t, (epoch, idx) in enumerate(plan(epochs_for(name))):
        seen["pre"].clear()
        seen["post"].clear()
        before = weights(trainer.model)
        trainer.step(epoch, idx)
        if len(seen["pre"]) != 1:
            return [f"restore: step {t} took {len(seen['pre'])} base-optimizer steps (expected 1)"]
        if gap := max_diff(seen["pre"][0], before):
            return [f"restore: step {t}: the base step started at weights max |Δ| = {gap:.3g} away from the step's "
                    "own (tolerance 0: a perturbation must be undone before the base step)"]
        if gap := max_diff(weights(trainer.model), seen["post"][0]):
            return [f"restore: step {t}: the weights moved by max |Δ| = {gap:.3g} after the base step "
                    "(tolerance 0: left perturbed)"]
    return []


@contextlib.contextmanager
def counting_passes() -> Iterator[list[float]]:
    """Forward (1/3) and backward (2/3) passes of any TinyNet (the model or a copy, e.g. an EMA), by samples."""
    passes: list[float] = [0.0]

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(module, TinyNet):
            passes[0] += output.shape[0] / BATCH / 3
            if output.requires_grad:
                output.register_hook(lambda g: passes.__setitem__(0, passes[0] + 2 * g.shape[0] / BATCH / 3))

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield passes
    finally:
        handle.remove()


def check_passes(name: str) -> list[str]:
    spec = method_class(name).spec
    trainer = Trainer(name)
    steps = plan(epochs_for(name))
    active = int(spec.active_from(spec.defaults))
    first = next(i for i, (epoch, _) in enumerate(steps) if epoch >= active)
    trainer.run(steps[:first])
    counted_steps = len(steps) - first
    cycle = int(spec.cycle(spec.defaults))
    counted_steps -= counted_steps % cycle if counted_steps >= cycle else 0
    with counting_passes() as passes:
        trainer.run(steps[first:first + counted_steps])
    per_step = passes[0] / counted_steps
    if abs(per_step - spec.passes) > PASSES_ATOL:
        return [f"passes: counted {per_step:.4g} forward-backward passes per step over {counted_steps} steps from "
                f"epoch {active}, the spec says {spec.passes:.4g} (tolerance {PASSES_ATOL})"]
    return []


class _Float64Audit(TorchDispatchMode):
    """Records ops that turn a float64 input into a lower-precision floating output."""

    def __init__(self) -> None:
        super().__init__()
        self.narrowed: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if torch.is_tensor(a)]
        if any(a.dtype == torch.float64 for a in inputs):
            for o in torch.utils._pytree.tree_leaves(out):
                if torch.is_tensor(o) and o.is_floating_point() and o.dtype != torch.float64 and not self.narrowed:
                    self.narrowed.append(f"{func} made {str(o.dtype).removeprefix('torch.')}")
        return out


def check_dtypes(name: str, reference: Reference | None = None) -> list[str]:
    steps = plan(epochs_for(name))
    failures = []
    audit = _Float64Audit()
    high = Trainer(name, dtype="float64")
    with audit:
        got64 = high.run(steps)
    if audit.narrowed:
        failures.append(f"dtypes: a float64 model computed below float64: {audit.narrowed[0]} from a float64 input "
                        "(tolerance: none)")
    if reference is not None:
        twin = tiny_net(0, torch.float64)  # the same initial weights, driven by the reference alone
        base = torch.optim.SGD(twin.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        ref = reference(twin, base, dict(high.kwargs))
        for t, (epoch, idx) in enumerate(steps):
            for group in base.param_groups:
                group["lr"] = lr_at(t, len(steps))
            ref.step(high.x[idx], high.y[idx], idx, epoch)
            gap = max_diff(flat(twin), got64[t])
            if not gap <= FLOAT64_ATOL:
                failures.append(f"dtypes: float64 weights after step {t} differ from the float64 reference by max "
                                f"|Δ| = {gap:.3g} (tolerance {FLOAT64_ATOL:g})")
                break
    final64 = weights(high.model)
    moved = float((final64 - weights(tiny_net(0, torch.float64))).norm())
    for label, dtype, precision in (("float32", "float32", "fp32"), ("bfloat16", "bfloat16", "fp32"),
                                    ("fp16", "float32", "fp16")):
        try:
            trainer = Trainer(name, dtype=dtype, precision=precision)
            trainer.run(steps)
        except Exception as exc:  # noqa: BLE001 - the failure is reported, in one line
            failures.append(f"dtypes: {label} parameters: a step raised {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        error = float((weights(trainer.model) - final64).norm()) / moved
        if not error <= TOLERANCES[label]:
            failures.append(f"dtypes: {label}: final weights {error:.3g} of the float64 run's displacement away from "
                            f"it (tolerance {TOLERANCES[label]:g})")
    return failures


class _Injector:
    """Makes the output (forward) or its gradient (backward) of the n-th grad-enabled model pass non-finite."""

    def __init__(self, model: nn.Module) -> None:
        self.target, self.where, self.count = 0, "forward", 0
        model.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if not output.requires_grad:
            return None
        self.count += 1
        if self.count != self.target:
            return None
        if self.where == "forward":
            return output + float("inf")
        output.register_hook(lambda g: g * float("inf"))
        return None


def check_fp16_skip(name: str) -> list[str]:
    spec = method_class(name).spec
    trainer = Trainer(name, precision="fp16")
    injector = _Injector(trainer.model)
    steps = plan(epochs_for(name))
    active = int(spec.active_from(spec.defaults))
    first = next(i for i, (epoch, _) in enumerate(steps) if epoch >= active)
    trainer.run(steps[:first])
    for t in range(first, min(len(steps), first + max(1, int(spec.cycle(spec.defaults))))):
        epoch, idx = steps[t]
        if epoch != trainer.epoch:  # set before the snapshots: a new epoch is not a change the skip made
            trainer.method.set_epoch(epoch)
            trainer.epoch = epoch
        probe = copy.deepcopy(trainer)  # how many grad passes this step makes
        probe_injector = _Injector(probe.model)
        probe.step(epoch, idx)
        for target in range(1, probe_injector.count + 1):
            for where in ("forward", "backward"):
                start, state = weights(trainer.model), copy.deepcopy(trainer.method.state_dict())
                scale = trainer.method.scaler.get_scale()
                injector.target, injector.where, injector.count = target, where, 0
                trainer.step(epoch, idx)
                trainer.done -= 1
                injector.target = 0
                what = f"fp16 skip: inf in the {where} of grad pass {target} of step {t}"
                if gap := max_diff(weights(trainer.model), start):
                    return [f"{what}: the weights moved by max |Δ| = {gap:.3g} (tolerance 0: the step must be "
                            "skipped)"]
                skip = ("grad_scaler", "base_optimizer.param_groups")  # the scaler's scale is checked below
                if changed := state_differences(trainer.method.state_dict(), state, skip=skip):
                    return [f"{what}: the method state changed at {changed[0]} (tolerance 0: untouched)"]
                if trainer.method.scaler.get_scale() != scale / 2:
                    return [f"{what}: the loss scale went {scale:g} -> {trainer.method.scaler.get_scale():g} "
                            "(expected halved, as GradScaler does)"]
        before = weights(trainer.model)
        loss = trainer.step(epoch, idx)
        if not torch.isfinite(loss) or not max_diff(weights(trainer.model), before):
            return [f"fp16 skip: the step {t} after the skips did not train (loss {float(loss):.4g})"]
    return []


CHECKS = {"spec": check_spec, "seed": check_seed, "resume": check_resume, "restore": check_restore,
          "passes": check_passes, "dtypes": check_dtypes, "fp16 skip": check_fp16_skip}


def conformance(name: str, *, reference: Reference | None = None,
                only: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """Failure lines of each check (empty lists: passed); a check that raises fails in one line."""
    results = {}
    for check, fn in CHECKS.items():
        if only is not None and check not in only:
            continue
        try:
            results[check] = fn(name, reference) if check == "dtypes" else fn(name)
        except Exception as exc:  # noqa: BLE001 - a crash is a failure of that check, in one line
            message = str(exc).splitlines()[0] if str(exc) else ""
            results[check] = [f"{check}: raised {type(exc).__name__}: {message}"]
    return results


def check_method(name: str, *, reference: Reference | None = None, only: tuple[str, ...] | None = None) -> None:
    """Raise AssertionError listing every failure of `conformance`, one line each."""
    failures = [line for lines in conformance(name, reference=reference, only=only).values() for line in lines]
    if failures:
        raise AssertionError(f"method {name!r} fails its conformance check:\n" + "\n".join(failures))
