"""Special cases that must reduce to another method exactly, and ESAM's selections and pass sizes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import optimizers

from . import reference as ref
from .harness import N, assert_same_outputs_exact, run_method, schedule
from .tiny import CLASSES, MODELS, assert_same_state, base_optimizer, data, model_state, twin


def _run(name: str, model_kind: str, epochs: int, opt_kind: str = "sgd", **hp):
    model = MODELS[model_kind]()
    x, y = data(model_kind, N)
    method = optimizers.create(name, model, base_optimizer(opt_kind, model), **hp)
    outs = run_method(method, x, y, schedule(epochs))
    return model, method, outs


# ---- exact reductions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bn_update", ["clean", "both"])
@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_esam_with_beta_gamma_one_is_sam_bitwise(model_kind: str, bn_update: str) -> None:
    sam_model, _, sam_outs = _run("sam", model_kind, 2, rho=0.3, bn_update=bn_update)
    esam_model, _, esam_outs = _run(
        "esam", model_kind, 2, rho=0.3, beta=1.0, gamma=1.0, seed=5, bn_update=bn_update
    )
    assert_same_state(esam_model, sam_model, exact=True)
    assert_same_outputs_exact(esam_outs, sam_outs)


SAF = {"num_samples": N, "num_classes": CLASSES, "store_dtype": "float32"}


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_saf_before_activation_is_sgd_bitwise(model_kind: str) -> None:
    # Active from max(e_start, e_tilde) = 3: epochs 0..2 are plain SGD, including epoch 2 >= e_tilde.
    sgd_model, _, sgd_outs = _run("sgd", model_kind, 3)
    saf_model, saf, saf_outs = _run("saf", model_kind, 3, **SAF, e_tilde=2, e_start=3, lam=1.0)
    assert_same_state(saf_model, sgd_model, exact=True)
    assert_same_outputs_exact(saf_outs, sgd_outs)
    # ...and e_tilde > e_start: active from e_tilde.
    saf_model, _, saf_outs = _run("saf", model_kind, 3, **SAF, e_tilde=3, e_start=0, lam=1.0)
    assert_same_state(saf_model, sgd_model, exact=True)


def test_saf_becomes_different_from_sgd_once_active() -> None:
    sgd_model, _, _ = _run("sgd", "mlp", 4)
    saf_model, _, _ = _run("saf", "mlp", 4, **SAF, e_tilde=2, e_start=3, lam=1.0, tau=2.0)
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(saf_model.parameters(), sgd_model.parameters(), strict=True)
    )
    assert diff > 1e-5


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_saf_with_lam_zero_is_sgd_bitwise(model_kind: str) -> None:
    sgd_model, _, sgd_outs = _run("sgd", model_kind, 4)
    saf_model, _, saf_outs = _run("saf", model_kind, 4, **SAF, e_tilde=1, e_start=1, lam=0.0)
    assert_same_state(saf_model, sgd_model, exact=True)
    assert_same_outputs_exact(saf_outs, sgd_outs)


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_mesa_before_e_start_is_sgd_bitwise_and_its_ema_follows_every_step(model_kind: str) -> None:
    decay = 0.7
    sgd_model, _, sgd_outs = _run("sgd", model_kind, 2)
    model = MODELS[model_kind]()
    ema = twin(model).eval()
    x, y = data(model_kind, N)
    opt = base_optimizer("sgd", model)
    mesa = optimizers.create("mesa", model, opt, e_start=2, ema_decay=decay, lam=1.0)
    for epoch, batches in schedule(2):
        mesa.set_epoch(epoch)
        for idx in batches:
            mesa.step(x[idx], y[idx], idx)
            with torch.no_grad():  # the spec's formula, step by step
                for name, t in ema.state_dict().items():
                    src = model.state_dict()[name]
                    t.copy_(decay * t + (1 - decay) * src if t.is_floating_point() else src)
    assert_same_state(model, sgd_model, exact=True)
    assert_same_state(mesa.ema, ema, atol=1e-6)
    assert not mesa.ema.training and model.training
    # The average did move: it is not the initial model, nor the current one.
    assert not torch.allclose(
        model_state(mesa.ema)[next(iter(ema.state_dict()))],
        model_state(MODELS[model_kind]())[next(iter(ema.state_dict()))],
    )


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_mesa_with_lam_zero_is_sgd_bitwise(model_kind: str) -> None:
    sgd_model, _, _ = _run("sgd", model_kind, 3)
    mesa_model, _, _ = _run("mesa", model_kind, 3, e_start=1, lam=0.0, ema_decay=0.5)
    assert_same_state(mesa_model, sgd_model, exact=True)


@pytest.mark.parametrize("name", ["sam", "esam"])
@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
def test_rho_zero_is_sgd(name: str, model_kind: str) -> None:
    sgd_model, _, _ = _run("sgd", model_kind, 2)
    extra = {"beta": 1.0, "gamma": 1.0} if name == "esam" else {}
    sam_model, _, _ = _run(name, model_kind, 2, rho=0.0, **extra)
    assert_same_state(sam_model, sgd_model, atol=1e-6)


@pytest.mark.parametrize(
    "name,hp", [("sam", {}), ("sam", {"adaptive": True}), ("esam", {"beta": 0.5, "gamma": 0.5})]
)
def test_two_pass_methods_restore_the_weights_exactly(name: str, hp: dict) -> None:
    """With lr = 0 the base step leaves w alone, so any trace of w + e would show."""
    model = MODELS["convbn"]()
    x, y = data("convbn", 8)
    before = {k: v.clone() for k, v in model.named_parameters()}
    method = optimizers.create(name, model, torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5, **hp)
    for _ in range(3):
        method.step(x, y)
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k]), k


# ---- BatchNorm buffers in the perturbed passes ------------------------------------------------------
@pytest.mark.parametrize(
    "name,hp,per_step",
    [
        ("sgd", {}, {"clean": 1, "both": 1}),
        ("sam", {}, {"clean": 1, "both": 2}),
        ("esam", {"beta": 1.0, "gamma": 1.0}, {"clean": 1, "both": 2}),
        ("esam", {"beta": 0.5, "gamma": 0.5}, {"clean": 1, "both": 2}),  # the SDS no-grad pass never counts
    ],
)
@pytest.mark.parametrize("bn_update", ["clean", "both"])
def test_bn_buffers_are_updated_only_by_the_passes_the_spec_names(name, hp, per_step, bn_update) -> None:
    model = MODELS["convbn"]()
    x, y = data("convbn", 8)
    method = optimizers.create(name, model, base_optimizer("sgd", model), bn_update=bn_update, **hp)
    for _ in range(3):
        method.step(x, y)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 3 * per_step[bn_update]
            assert m.track_running_stats  # left as found


def test_sam_clean_bn_running_stats_come_from_the_clean_pass_only() -> None:
    model = MODELS["convbn"]()
    clean_only = twin(model)
    x, y = data("convbn", 8)
    optimizers.create("sam", model, torch.optim.SGD(model.parameters(), lr=0.0), rho=1.0).step(x, y)
    with torch.no_grad():
        clean_only(x)  # one train-mode forward at the same (unchanged, lr = 0) weights
    assert_same_state(model, clean_only, atol=1e-7)


# ---- ESAM: which samples and tensors the second pass uses -----------------------------------------
class PassRecorder:
    """Forward pre-hook on the whole model: each pass's inputs and whether grad was enabled."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, bool]] = []
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls.append((args[0].detach().clone(), torch.is_grad_enabled()))


@pytest.mark.parametrize(
    "gamma,batch", [(0.5, 8), (0.3, 16), (0.01, 8), (0.9, 10), (0.99, 8), (1.0, 8), (0.25, 1)]
)
def test_esam_second_pass_batch_size_is_ceil_gamma_b(gamma: float, batch: int) -> None:
    model = MODELS["mlp"]()
    x, y = data("mlp", batch)
    method = optimizers.create("esam", model, base_optimizer("sgd", model), rho=0.1, beta=1.0, gamma=gamma)
    recorder = PassRecorder(model)
    method.step(x, y)
    k = max(1, math.ceil(gamma * batch))
    sizes = [c[0].shape[0] for c in recorder.calls]
    grads = [c[1] for c in recorder.calls]
    if k < batch:
        assert sizes == [batch, batch, k] and grads == [True, False, True]
    else:
        assert sizes == [batch, batch] and grads == [True, True]
    assert method.extra_metrics()["esam_selected_fraction"] == pytest.approx(k / batch)


def _rows(sub: torch.Tensor, full: torch.Tensor) -> list[int]:
    """Which rows of `full` the rows of `sub` are (inputs are distinct random vectors)."""
    out = []
    for row in sub:
        hits = [i for i in range(full.shape[0]) if torch.equal(full[i], row)]
        assert len(hits) == 1
        out.append(hits[0])
    return sorted(out)


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
@pytest.mark.parametrize("beta,gamma,seed", [(1.0, 0.5, 0), (0.5, 0.25, 3), (0.7, 0.6, 11)])
@pytest.mark.parametrize("selection", ["paper", "official"])
def test_esam_sds_selects_the_samples_whose_loss_rose_most(model_kind, beta, gamma, seed, selection) -> None:
    """The paper's ceil(gamma B) largest rises, or (selection='official', the official utils/Esam.py) the rises
    above the int(gamma B)-th largest: int(gamma B) - 1 samples here (distinct rises); the same trajectory as
    the float64 loop."""
    model = MODELS[model_kind]()
    ref_model = twin(model)
    x, y = data(model_kind, 12, seed=seed + 20)
    method = optimizers.create(
        "esam", model, base_optimizer("sgd", model), rho=0.5, beta=beta, gamma=gamma, seed=seed, selection=selection
    )
    ref_opt = base_optimizer("sgd", ref_model)
    draw = ref.RefESAM(seed, beta)
    recorder = PassRecorder(model)
    kept = math.ceil(gamma * 12) if selection == "paper" else int(gamma * 12) - 1
    for step in range(3):
        recorder.calls.clear()
        method.step(x, y)
        _, _, chosen = ref.sam_step(ref_model, ref_opt, x, y, rho=0.5, esam=draw, gamma=gamma, selection=selection)
        second = recorder.calls[-1][0]
        assert second.shape[0] == kept
        assert _rows(second, x) == chosen, f"step {step}"
        assert method.extra_metrics()["esam_selected_fraction"] == pytest.approx(kept / 12)
    assert_same_state(model, ref_model, atol=1e-6)


def test_esam_sds_on_a_case_with_a_known_answer() -> None:
    """A bias-free linear model: zero inputs have constant loss (rise 0); the only sample with a gradient,
    repeated, is the ascent direction, so its copies' losses rise. gamma = 1/2 must keep exactly them."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3, bias=False)
    x0 = torch.randn(5)
    x = torch.stack([x0, torch.zeros(5), x0, torch.zeros(5), torch.zeros(5), x0, x0, torch.zeros(5)])
    y = torch.tensor([1, 0, 1, 2, 0, 1, 1, 2])
    method = optimizers.create(
        "esam", model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.1, beta=1.0, gamma=0.5
    )
    recorder = PassRecorder(model)
    method.step(x, y)
    second = recorder.calls[-1][0]
    assert second.shape[0] == 4
    assert all(torch.equal(row, x0) for row in second)


def test_esam_draws_tensors_in_param_group_order() -> None:
    """Two param groups listed in the reverse of model.parameters() order, with their own lr:
    the Bernoulli draw is indexed by the base optimizer's order, which the reference follows."""
    model = MODELS["convbn"]()
    ref_model = twin(model)

    def groups(m):
        params = list(m.parameters())
        return torch.optim.SGD(
            [{"params": params[::-1][:3], "lr": 0.05}, {"params": params[::-1][3:]}], lr=0.1, momentum=0.9
        )

    x, y = data("convbn", N)
    opt, ref_opt = groups(model), groups(ref_model)
    method = optimizers.create("esam", model, opt, rho=0.5, beta=0.5, gamma=0.5, seed=4)
    draw = ref.RefESAM(4, 0.5)
    for _, batches in schedule(2):
        for idx in batches:
            method.step(x[idx], y[idx])
            ref.sam_step(ref_model, ref_opt, x[idx], y[idx], rho=0.5, esam=draw, gamma=0.5)
    assert_same_state(model, ref_model, atol=1e-6)


_EMPTY_DRAW_BUG = (
    "BUG optimizers/sam.py:56: when ESAM's draw selects no tensor, torch._foreach_add_([], []) "
    "raises 'Tensor list must have at least one tensor' instead of skipping the perturbation"
)


def test_esam_step_where_the_draw_selects_no_tensor_is_an_unperturbed_step() -> None:
    """A 2-tensor model at beta = 0.5 draws no tensor on 1 step in 4; such a step has e = 0, so its
    descent gradient is the clean one. gamma = 1 keeps the comparison free of SDS ties (all rises are 0)."""
    torch.manual_seed(0)
    model = nn.Linear(6, CLASSES)
    ref_model = twin(model)
    x, y = data("mlp", N)
    plan = schedule(3)
    preview = ref.RefESAM(0, 0.5)
    assert any(not any(preview.mask(2)) for _, batches in plan for _ in batches)  # the case does occur
    method = optimizers.create(
        "esam", model, base_optimizer("sgd", model), rho=0.5, beta=0.5, gamma=1.0, seed=0
    )
    ref_opt = base_optimizer("sgd", ref_model)
    draw = ref.RefESAM(0, 0.5)
    for _, batches in plan:
        for idx in batches:
            method.step(x[idx], y[idx])
            ref.sam_step(ref_model, ref_opt, x[idx], y[idx], rho=0.5, esam=draw, gamma=1.0)
    assert_same_state(model, ref_model, atol=1e-6)


@pytest.mark.parametrize("gamma,batch,kept", [(0.99, 8, 8), (0.995, 8, 8), (0.95, 8, 6), (0.9, 10, 8)])
def test_esam_official_selection_batch_sizes(gamma: float, batch: int, kept: int) -> None:
    """gamma >= 0.99 keeps every sample; below, int(gamma B) - 1 (the paper's rule would keep ceil(gamma B))."""
    model = MODELS["mlp"]()
    x, y = data("mlp", batch)
    method = optimizers.create("esam", model, base_optimizer("sgd", model), rho=0.1, beta=1.0, gamma=gamma,
                               selection="official")
    recorder = PassRecorder(model)
    method.step(x, y)
    assert recorder.calls[-1][0].shape[0] == kept


def test_esam_official_selection_that_keeps_nothing_says_so() -> None:
    model = MODELS["mlp"]()
    x, y = data("mlp", 8)
    for gamma, words in ((0.1, "int(gamma B) = 0"), (0.2, "the official loss would be NaN")):
        method = optimizers.create("esam", model, base_optimizer("sgd", model), rho=0.1, beta=1.0, gamma=gamma,
                                   selection="official")
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            method.step(x, y)
