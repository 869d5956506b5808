"""GSAM and LookSAM against float64 loops written here from the formulas (nothing below calls their classes
to compute an expected value), their reductions to SAM and SGD, the orthogonality of g_perp and g_v, GSAM's
radius schedule, LookSAM's step counter (resume, fp16 skips), pass counts and BatchNorm passes."""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from torch import Tensor, nn

import optimizers

from . import reference as ref
from .harness import N, run_method, schedule
from .test_pass_counts import BATCH, Forward, make, passes
from .test_precision import Injector
from .tiny import MODELS, assert_same_state, base_optimizer, data, model_state, twin

EPS = 1e-12


# ---- float64 references, from the formulas ------------------------------------------------------------
def ce64(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy from log-sum-exp, in the logits' dtype (float64 here)."""
    return (torch.logsumexp(logits, dim=1) - logits[torch.arange(y.shape[0]), y]).mean()


def dot(a: list[Tensor], b: list[Tensor]) -> float:
    return sum(float((u.double() * v.double()).sum()) for u, v in zip(a, b, strict=True))


def grads_at(model: nn.Module, params: list[nn.Parameter], x: Tensor, y: Tensor, *, keep_bn: bool) -> list[Tensor]:
    """grad of the mean CE at the current weights; keep_bn: BatchNorm buffers restored afterwards."""
    ctx = ref.restored_buffers(model) if keep_bn else contextlib.nullcontext()
    with ctx:
        return list(torch.autograd.grad(ce64(model(x), y), params))


def sam_pair(model, params, x, y, rho):
    """g at w (clean pass, updates BN), and g_s at w + rho g/||g|| (BN frozen); w restored by copy."""
    g = grads_at(model, params, x, y, keep_bn=False)
    norm = math.sqrt(dot(g, g))
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, gi in zip(params, g, strict=True):
            p.add_(gi * (rho / (norm + EPS)))
    g_s = grads_at(model, params, x, y, keep_bn=True)
    with torch.no_grad():
        for p, w in zip(params, saved, strict=True):
            p.copy_(w)
    return g, g_s


def rho_schedule(lr: float, rho: float, rho_min: float, lr_max: float, lr_min: float) -> float:
    if lr_max == lr_min:
        return rho
    return max(0.0, rho_min + (rho - rho_min) * (lr - lr_min) / (lr_max - lr_min))


def ref_gsam_step(model, opt, x, y, *, rho_t: float, alpha: float) -> None:
    params = ref.opt_params(opt)
    g, g_p = sam_pair(model, params, x, y, rho_t)
    c = dot(g, g_p) / dot(g_p, g_p)
    g_perp = [a - c * b for a, b in zip(g, g_p, strict=True)]
    ref.apply_grads(opt, [b - alpha * v for b, v in zip(g_p, g_perp, strict=True)])


class RefLookSAM:
    def __init__(self, rho: float, k: int, alpha: float) -> None:
        self.rho, self.k, self.alpha, self.t, self.g_v = rho, k, alpha, 0, None

    def step(self, model, opt, x, y) -> None:
        params = ref.opt_params(opt)
        if self.t % self.k == 0:
            g, g_s = sam_pair(model, params, x, y, self.rho)
            c = dot(g, g_s) / dot(g, g)
            self.g_v = [s - c * a for s, a in zip(g_s, g, strict=True)]
            ref.apply_grads(opt, g_s)
        else:
            g = grads_at(model, params, x, y, keep_bn=False)
            w = self.alpha * math.sqrt(dot(g, g)) / math.sqrt(dot(self.g_v, self.g_v))
            ref.apply_grads(opt, [a + w * v for a, v in zip(g, self.g_v, strict=True)])
        self.t += 1


def linear_lr(opt: torch.optim.Optimizer, steps: int, end: float) -> torch.optim.lr_scheduler.LambdaLR:
    """lr falls linearly from its initial value to `end` times it over `steps` steps."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - (1.0 - end) * min(t, steps) / steps)


def _pair(model_kind: str, opt_kind: str):
    model = MODELS[model_kind]()
    ref_model = twin(model).double()
    return model, ref_model, base_optimizer(opt_kind, model), base_optimizer(opt_kind, ref_model)


STEPS = 8


@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
@pytest.mark.parametrize("hp", [{"rho": 0.3, "rho_min": 0.1, "alpha": 0.4}, {"rho": 0.5, "rho_min": 0.0, "alpha": 2.0}])
def test_gsam_matches_its_float64_reference_under_a_falling_lr(model_kind, opt_kind, hp) -> None:
    model, ref_model, opt, ref_opt = _pair(model_kind, opt_kind)
    lr0 = opt.param_groups[0]["lr"]
    method = optimizers.create("gsam", model, opt, lr_max=lr0, lr_min=0.2 * lr0, **hp)
    sched, ref_sched = linear_lr(opt, STEPS, 0.2), linear_lr(ref_opt, STEPS, 0.2)
    x, y = data(model_kind, N)
    seen = []
    for t in range(STEPS):
        idx = torch.randperm(N, generator=torch.Generator().manual_seed(t))[:8]
        rho_t = rho_schedule(ref_opt.param_groups[0]["lr"], hp["rho"], hp["rho_min"], lr0, 0.2 * lr0)
        method.step(x[idx], y[idx])
        seen.append(method.extra_metrics()["gsam_rho"])
        ref_gsam_step(ref_model, ref_opt, x[idx].double(), y[idx], rho_t=rho_t, alpha=hp["alpha"])
        assert seen[-1] == pytest.approx(rho_t, rel=1e-12)
        sched.step()
        ref_sched.step()
    assert seen[0] == pytest.approx(hp["rho"]) and seen[-1] < seen[0]  # the radius did follow the lr
    assert_same_state(model, {k: v.float() for k, v in model_state(ref_model).items()}, atol=2e-5)


@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
@pytest.mark.parametrize("k,alpha", [(3, 0.7), (2, 1.5), (4, 0.0)])
def test_looksam_matches_its_float64_reference(model_kind, opt_kind, k, alpha) -> None:
    model, ref_model, opt, ref_opt = _pair(model_kind, opt_kind)
    method = optimizers.create("looksam", model, opt, rho=0.3, k=k, alpha=alpha)
    reference = RefLookSAM(0.3, k, alpha)
    x, y = data(model_kind, N)
    plan = schedule(3)  # 9 steps over 3 epochs: the count runs on across epochs
    run_method(method, x, y, plan)
    for _, batches in plan:
        for idx in batches:
            reference.step(ref_model, ref_opt, x[idx].double(), y[idx])
    assert method.steps == reference.t == 9
    assert_same_state(model, {k_: v.float() for k_, v in model_state(ref_model).items()}, atol=2e-5)
    for a, b in zip(method.g_v, reference.g_v, strict=True):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=0)


def test_reference_terms_are_active() -> None:
    """Guard against vacuous comparisons: alpha moves GSAM's and LookSAM's weights measurably."""
    for name, hp in [("gsam", {"rho": 0.3, "rho_min": 0.3}), ("looksam", {"rho": 0.3, "k": 3})]:
        runs = []
        for alpha in (0.0, 1.0):
            model = MODELS["mlp"]()
            x, y = data("mlp", N)
            run_method(optimizers.create(name, model, base_optimizer("sgd", model), alpha=alpha, **hp), x, y,
                       schedule(2))
            runs.append(model)
        diff = max((a - b).abs().max().item() for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True))
        assert diff > 1e-4, name


# ---- reductions ---------------------------------------------------------------------------------------
def _run(name: str, model_kind: str, epochs: int = 2, **hp):
    model = MODELS[model_kind]()
    x, y = data(model_kind, N)
    run_method(optimizers.create(name, model, base_optimizer("sgd", model), **hp), x, y, schedule(epochs))
    return model


@pytest.mark.parametrize("bn_update", ["clean", "both"])
@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_gsam_with_alpha_zero_is_sam(model_kind: str, bn_update: str) -> None:
    sam = _run("sam", model_kind, rho=0.2, bn_update=bn_update)
    gsam = _run("gsam", model_kind, rho=0.2, rho_min=0.2, alpha=0.0, bn_update=bn_update, lr_max=0.1, lr_min=0.01)
    assert_same_state(gsam, sam, atol=1e-6)


def test_gsam_with_alpha_zero_is_sam_at_the_scheduled_radius() -> None:
    """Each step of GSAM(alpha = 0) is a SAM step at rho_t: a SAM twin told rho_t before each step follows it."""
    model, other = MODELS["convbn"](), MODELS["convbn"]()
    opt, other_opt = base_optimizer("sgd", model), base_optimizer("sgd", other)
    gsam = optimizers.create("gsam", model, opt, rho=0.5, rho_min=0.1, alpha=0.0, lr_max=0.1, lr_min=0.0)
    sam = optimizers.create("sam", other, other_opt, rho=0.5)
    scheds = [linear_lr(o, 6, 0.0) for o in (opt, other_opt)]
    x, y = data("convbn", 8)
    for _ in range(6):
        sam.rho = 0.1 + 0.4 * other_opt.param_groups[0]["lr"] / 0.1
        gsam.step(x, y)
        sam.step(x, y)
        assert gsam.extra_metrics()["gsam_rho"] == pytest.approx(sam.rho, rel=1e-12)
        for s in scheds:
            s.step()
    assert_same_state(model, other, atol=1e-6)


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_looksam_with_k_one_is_sam(model_kind: str) -> None:
    sam = _run("sam", model_kind, rho=0.2)
    looksam = _run("looksam", model_kind, rho=0.2, k=1, alpha=0.9)
    assert_same_state(looksam, sam, atol=1e-6)


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_looksam_with_alpha_zero_is_sgd_on_the_reuse_steps(model_kind: str) -> None:
    """k = 3, alpha = 0: steps 0, 3, 6 are SAM's, the others SGD's, on one model and base optimizer."""
    model, other = MODELS[model_kind](), MODELS[model_kind]()
    other_opt = base_optimizer("sgd", other)
    looksam = optimizers.create("looksam", model, base_optimizer("sgd", model), rho=0.2, k=3, alpha=0.0)
    sam, sgd = optimizers.create("sam", other, other_opt, rho=0.2), optimizers.create("sgd", other, other_opt)
    x, y = data(model_kind, N)
    for t, (_, idx) in enumerate((e, i) for e, batches in schedule(3) for i in batches):
        looksam.step(x[idx], y[idx])
        (sam if t % 3 == 0 else sgd).step(x[idx], y[idx])
    assert_same_state(model, other, atol=1e-6)


# ---- orthogonality -------------------------------------------------------------------------------------
def test_gsam_g_perp_is_orthogonal_to_g_p_and_completes_g() -> None:
    """Plain SGD at lr 1 makes the update d = w - w': then g_perp = (g_p - d)/alpha, with g and g_p computed here."""
    model = MODELS["mlp"]()
    x, y = data("mlp", 8)
    params = list(model.parameters())
    method = optimizers.create("gsam", model, torch.optim.SGD(params, lr=1.0), rho=0.4, rho_min=0.4, alpha=0.5)
    for _ in range(3):
        w64 = twin(model).double()
        g, g_p = sam_pair(w64, list(w64.parameters()), x.double(), y, 0.4)
        before = [p.detach().clone() for p in params]
        method.step(x, y)
        d = [(b - p.detach()).double() for b, p in zip(before, params, strict=True)]
        g_perp = [(gp - di) / 0.5 for gp, di in zip(g_p, d, strict=True)]
        assert abs(dot(g_perp, g_p)) < 1e-5 * math.sqrt(dot(g_perp, g_perp) * dot(g_p, g_p))
        assert dot(g_perp, g_perp) > 1e-8  # not vacuous
        c = dot(g, g_p) / dot(g_p, g_p)
        for a, b, v in zip(g, g_p, g_perp, strict=True):  # g = c g_p + g_perp
            torch.testing.assert_close(v, a - c * b, atol=1e-5, rtol=0)


def test_looksam_g_v_is_orthogonal_to_g_and_completes_g_s() -> None:
    model = MODELS["convbn"]()
    x, y = data("convbn", 8)
    method = optimizers.create("looksam", model, base_optimizer("sgd", model), rho=0.4, k=2)
    for t in range(4):
        w64 = twin(model).double()
        g, g_s = sam_pair(w64, list(w64.parameters()), x.double(), y, 0.4)
        method.step(x, y)
        if t % 2:
            continue
        g_v = [v.double() for v in method.g_v]
        assert abs(dot(g_v, g)) < 1e-5 * math.sqrt(dot(g_v, g_v) * dot(g, g))
        assert dot(g_v, g_v) > 1e-8
        c = dot(g, g_s) / dot(g, g)
        for v, s, a in zip(g_v, g_s, g, strict=True):
            torch.testing.assert_close(v, s - c * a, atol=1e-5, rtol=0)


# ---- GSAM's radius schedule ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rho,rho_min,lr_max,lr_min,lr,expected",
    [
        (0.04, 0.02, 0.1, 0.01, 0.1, 0.04),  # at the peak: rho_max
        (0.04, 0.02, 0.1, 0.01, 0.01, 0.02),  # at the floor: rho_min
        (0.04, 0.02, 0.1, 0.01, 0.055, 0.03),  # half way
        (0.04, 0.02, 1.4, 0.0, 0.35, 0.025),
        (0.6, 0.0, 0.1, 0.01, 0.005, 0.0),  # warm-up below lr_min: -0.033 clamped at 0
        (0.6, 0.0, 0.1, 0.0, 0.0, 0.0),
        (0.04, 0.02, 0.1, 0.1, 0.03, 0.04),  # constant schedule: rho_max whatever the lr
    ],
)
def test_gsam_radius_follows_the_lr_and_is_clamped_at_zero(rho, rho_min, lr_max, lr_min, lr, expected) -> None:
    model = MODELS["mlp"]()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    method = optimizers.create("gsam", model, opt, rho=rho, rho_min=rho_min, lr_max=lr_max, lr_min=lr_min)
    assert method.rho_t() == pytest.approx(expected, abs=1e-12)
    x, y = data("mlp", 8)
    method.step(x, y)
    assert method.extra_metrics()["gsam_rho"] == pytest.approx(expected, abs=1e-12)


def test_gsam_without_an_lr_range_uses_rho_max() -> None:
    model = MODELS["mlp"]()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = optimizers.create("gsam", model, opt, rho=0.3, rho_min=0.0)
    opt.param_groups[0]["lr"] = 0.01
    assert method.rho_t() == 0.3


def test_run_passes_the_schedules_lr_range_to_gsam(tmp_path) -> None:
    from bench.config import RunConfig
    from bench.run import Run

    config = RunConfig.from_dict(dict(dataset="synthetic", model="mlp_tiny", method="gsam", epochs=4, batch_size=16,
                                      lr=0.2, train_subset=64, device="cpu", out=str(tmp_path), num_workers=0,
                                      progress=False, schedule="step", lr_milestones=[1, 3], lr_gamma=0.1))
    method = Run(config).method
    assert (method.lr_max, method.lr_min) == pytest.approx((0.2, 0.002))


# ---- LookSAM's counter: resume and fp16 skips ------------------------------------------------------------
@pytest.mark.parametrize("split", [1, 2, 4, 5])
def test_looksam_resume_continues_the_count_and_g_v(split: int) -> None:
    x, y = data("convbn", N)
    steps = [idx for _, batches in schedule(3) for idx in batches]

    def build(seed: int):
        model = MODELS["convbn"](seed=seed)
        return model, optimizers.create("looksam", model, base_optimizer("sgd", model), rho=0.3, k=3)

    whole, method = build(0)
    for idx in steps:
        method.step(x[idx], y[idx])
    part, first = build(0)
    for idx in steps[:split]:
        first.step(x[idx], y[idx])
    buffer = io.BytesIO()
    torch.save({"model": part.state_dict(), "method": first.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed, second = build(7)
    resumed.load_state_dict(checkpoint["model"])
    second.load_state_dict(checkpoint["method"])
    assert second.steps == split
    for idx in steps[split:]:
        second.step(x[idx], y[idx])
    assert_same_state(resumed, whole, exact=True)
    assert second.steps == method.steps == len(steps)
    assert all(torch.equal(a, b) for a, b in zip(second.g_v, method.g_v, strict=True))


@pytest.mark.parametrize("t_inject", [3, 4])  # a SAM step (k = 3), a reuse step
@pytest.mark.parametrize("where", ["forward", "backward"])
def test_looksam_fp16_skip_leaves_the_count_and_g_v(t_inject: int, where: str) -> None:
    model = MODELS["mlp"]()
    x, y = data("mlp", 16)
    opt = base_optimizer("sgd", model)
    method = optimizers.create("looksam", model, opt, rho=0.1, k=3, precision="fp16",
                               grad_scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    injector = Injector(model[-1])
    for _ in range(t_inject):
        method.step(x, y)
    g_v, weights, scale = [t.clone() for t in method.g_v], model_state(model), method.scaler.get_scale()
    for skipped_pass in ({1}, {2}) if t_inject % 3 == 0 else ({1},):
        injector.arm(skipped_pass, where)
        method.step(x, y)
        assert injector.count >= 1
        assert method.steps == t_inject
        assert all(torch.equal(a, b) for a, b in zip(method.g_v, g_v, strict=True))
        assert_same_state(model, weights, exact=True)
        assert method.scaler.get_scale() < scale
        scale = method.scaler.get_scale()
    injector.arm(set(), where)
    method.step(x, y)  # the same kind of step is taken now, and the count moves on
    assert method.steps == t_inject + 1
    changed = any(not torch.equal(a, b) for a, b in zip(method.g_v, g_v, strict=True))
    assert changed == (t_inject % 3 == 0)


@pytest.mark.parametrize("name,hp", [("gsam", {"rho": 0.2, "rho_min": 0.2, "alpha": 0.5}),
                                     ("looksam", {"rho": 0.2, "k": 2, "alpha": 0.7})])
def test_fp16_steps_match_the_float64_reference_closely(name: str, hp: dict) -> None:
    """The scaler's factor must cancel out of both combinations: a scaled g would be 2**16 times too large."""
    model = MODELS["mlp"]()
    ref_model, start = twin(model).double(), model_state(model)
    x, y = data("mlp", 16)
    method = optimizers.create(name, model, base_optimizer("sgd", model), precision="fp16", **hp)
    ref_opt = base_optimizer("sgd", ref_model)
    reference = RefLookSAM(hp["rho"], hp["k"], hp["alpha"]) if name == "looksam" else None
    for _ in range(4):
        method.step(x, y)
        if reference is not None:
            reference.step(ref_model, ref_opt, x.double(), y)
        else:
            ref_gsam_step(ref_model, ref_opt, x.double(), y, rho_t=hp["rho"], alpha=hp["alpha"])
    moved = max((ref_model.state_dict()[k].float() - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-2
    assert_same_state(model, {k: v.float() for k, v in model_state(ref_model).items()}, atol=2e-3)


@pytest.mark.parametrize("name,hp", [("gsam", {}), ("looksam", {"k": 2})])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_mixed_precision_runs_with_finite_losses(name: str, hp: dict, precision: str, model_kind: str) -> None:
    model = MODELS[model_kind]()
    fp32 = twin(model)
    x, y = data(model_kind, 16)
    method = optimizers.create(name, model, base_optimizer("sgd", model), precision=precision, **hp)
    fp32_method = optimizers.create(name, fp32, base_optimizer("sgd", fp32), **hp)
    for _ in range(4):
        out, out32 = method.step(x, y), fp32_method.step(x, y)
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss) and torch.isfinite(out.logits).all()
        assert out.loss.item() == pytest.approx(out32.loss.item(), abs=3e-2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- passes and BatchNorm ----------------------------------------------------------------------------------
def test_gsam_two_full_passes() -> None:
    method, log = make("gsam", epoch=0)
    for step in passes(method, log):
        assert step.forwards == [Forward("model", BATCH, True)] * 2
        assert step.backwards == [("model", BATCH)] * 2
        assert step.optimizer_steps == 1


@pytest.mark.parametrize("k", [1, 3, 5])
def test_looksam_two_passes_every_kth_step_one_otherwise(k: int) -> None:
    method, log = make("looksam", epoch=0, k=k)
    logs = passes(method, log, steps=2 * k + 1)
    counts = [len(step.forwards) for step in logs]
    assert counts == [2 if t % k == 0 else 1 for t in range(2 * k + 1)]
    assert all(len(s.backwards) == len(s.forwards) and s.optimizer_steps == 1 for s in logs)
    assert sum(counts[: 2 * k]) / (2 * k) == pytest.approx((k + 1) / k)
    if k == 5:
        assert optimizers.method_spec("looksam").passes == pytest.approx((k + 1) / k)


@pytest.mark.parametrize("bn_update,gsam_per_step,looksam_three_steps", [("clean", 1, 3), ("both", 2, 5)])
def test_bn_buffers_are_updated_only_by_the_passes_bn_update_names(bn_update, gsam_per_step,
                                                                  looksam_three_steps) -> None:
    x, y = data("convbn", 8)
    for name, hp, expected in [("gsam", {}, 3 * gsam_per_step), ("looksam", {"k": 2}, looksam_three_steps)]:
        model = MODELS["convbn"]()
        method = optimizers.create(name, model, base_optimizer("sgd", model), bn_update=bn_update, **hp)
        for _ in range(3):  # LookSAM k = 2: SAM, reuse, SAM
            method.step(x, y)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert int(m.num_batches_tracked) == expected, name
                assert m.track_running_stats


@pytest.mark.parametrize("name", ["gsam", "looksam"])
def test_weights_are_restored_exactly_after_the_perturbed_pass(name: str) -> None:
    model = MODELS["convbn"]()
    x, y = data("convbn", 8)
    before = {k: v.clone() for k, v in model.named_parameters()}
    method = optimizers.create(name, model, torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5)
    for _ in range(3):
        method.step(x, y)
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k]), k
