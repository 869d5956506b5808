"""Hessian measurements checked against a dense float64 Hessian of tiny models."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from analysis.measure import hessian


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # only builds the fixture; the functions under test must not need it
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Softplus(), nn.Linear(6, 3))  # 115


def tiny_convbn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    )


def mlp_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(24, 4, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    return [(x[:7], y[:7]), (x[7:], y[7:])]  # unequal sizes: the loss must be weighted by batch size


def conv_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(6, 1, 5, 5, generator=g), torch.randint(0, 2, (6,), generator=g))]


def dense_hessian(
    model: nn.Module, batches: list, names: list[str] | None = None, bn_train: bool = False
) -> torch.Tensor:
    """float64 Hessian of the mean loss by torch.autograd.functional.hessian on flattened weights."""
    m = copy.deepcopy(model).double().eval()
    if bn_train:
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.train()
    base = {n: p.detach() for n, p in m.named_parameters()}
    names = names or list(base)
    shapes = [base[n].shape for n in names]
    numels = [base[n].numel() for n in names]
    if bn_train:  # batch statistics are per batch, so the loss is the weighted mean of batch losses
        pairs = [(x.double(), y) for x, y in batches]
    else:  # one concatenated batch: checks the batch-size weighting independently
        pairs = [(torch.cat([b[0] for b in batches]).double(), torch.cat([b[1] for b in batches]))]
    total = sum(len(y) for _, y in pairs)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        ps = dict(base)
        for n, c, s in zip(names, torch.split(flat, numels), shapes, strict=True):
            ps[n] = c.view(s)
        return sum(F.cross_entropy(functional_call(m, ps, (x,)), y) * len(y) for x, y in pairs) / total

    return torch.autograd.functional.hessian(loss, torch.cat([base[n].reshape(-1) for n in names]))


def dominant(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs sorted by decreasing magnitude, as power iteration finds them."""
    vals, vecs = torch.linalg.eigh(h)
    order = vals.abs().argsort(descending=True)
    return vals[order], vecs[:, order]


def flat(vec: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in vec]).double()


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "rng": torch.get_rng_state(),
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["modes"] == after["modes"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    for g0, g1 in zip(before["grads"], after["grads"], strict=True):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert torch.equal(before["rng"], after["rng"])


def test_top_eigenpairs_match_dense_hessian() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    vals, vecs = dominant(dense_hessian(model, batches))
    eig = hessian.top_eigenvalues(model, batches, k=3, tol=1e-7, max_iter=2000, algorithm="power")
    assert eig.param_names == [n for n, _ in model.named_parameters()]
    assert abs(eig.eigenvalues[0] - vals[0].item()) <= 1e-3 * abs(vals[0].item())
    for i in range(3):
        assert eig.eigenvalues[i] == pytest.approx(vals[i].item(), rel=1e-3)
        v = flat(eig.eigenvectors[i])
        cos = (v @ vecs[:, i]) / v.norm()
        assert abs(cos.item()) > 0.999
    assert [t.shape for t in eig.eigenvectors[0]] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("algorithm", ["lanczos", "power"])
def test_default_tolerance_is_close_enough_for_lambda_max(algorithm: str) -> None:
    model, batches = tiny_mlp(), mlp_batches()
    vals, _ = dominant(dense_hessian(model, batches))
    assert vals[0] > 0  # here the largest eigenvalue is also the largest in magnitude
    eig = hessian.top_eigenvalues(model, batches, algorithm=algorithm)
    assert eig.eigenvalues[0] == pytest.approx(vals[0].item(), rel=1e-3)
    assert 1 < eig.hvps <= 100


def test_trace_within_three_standard_errors_of_dense_trace() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    dense_trace = dense_hessian(model, batches).trace().item()
    est = hessian.trace(model, batches, n_samples=100, seed=3)
    assert est.n_samples == 100 and est.stderr > 0
    assert abs(est.estimate - dense_trace) <= 3 * est.stderr


def test_slq_density_matches_dense_spectrum() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    h = dense_hessian(model, batches)
    ev = torch.linalg.eigvalsh(h)
    lo, hi, n = ev.min().item(), ev.max().item(), h.shape[0]
    slack = 1e-3 * (hi - lo)
    n_v = 8
    dens = hessian.density(model, batches, n_iter=40, n_v=n_v, seed=0)
    nodes, weights = torch.tensor(dens.eigenvalues), torch.tensor(dens.weights)
    assert dens.n_iter == 40 and dens.dim == n and len(nodes) == len(weights)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (weights >= 0).all()
    assert nodes.min().item() >= lo - slack and nodes.max().item() <= hi + slack
    # Lanczos finds the extreme eigenvalues first.
    assert nodes.max().item() == pytest.approx(hi, rel=1e-3)
    assert nodes.min().item() == pytest.approx(lo, rel=1e-2)
    # First moment = mean of v^T H v over unit Rademacher v: unbiased for trace/n with a known spread.
    first = (nodes * weights).sum().item()
    off = h - torch.diag(torch.diag(h))
    sd = math.sqrt(2 * (off**2).sum().item()) / n / math.sqrt(n_v)
    assert abs(first - h.trace().item() / n) <= 4 * sd
    # The smoothed curve is a density.
    assert float(((dens.density[1:] + dens.density[:-1]) / 2 * (dens.grid[1:] - dens.grid[:-1])).sum()) == (
        pytest.approx(1.0, abs=1e-2)
    )


def test_full_lanczos_nodes_are_dense_eigenvalues() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    ev = torch.linalg.eigvalsh(dense_hessian(model, batches))
    dens = hessian.density(model, batches, n_iter=500, n_v=1, seed=1)  # capped at the dimension
    assert dens.n_iter == len(ev)
    # A (near-)full Krylov space makes every Ritz value an eigenvalue of H (it may stop early on
    # an invariant subspace, so there can be fewer nodes than eigenvalues).
    nodes = torch.tensor(dens.eigenvalues, dtype=torch.float64)
    assert len(nodes) > len(ev) // 2
    gap = (nodes[:, None] - ev[None, :]).abs().min(dim=1).values
    assert gap.max().item() <= 1e-4 * (ev.max() - ev.min()).item()


def test_parameter_subset_equals_dense_block() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    names = ["2.weight", "2.bias"]
    block = dense_hessian(model, batches, names=names)
    full = dense_hessian(model, batches)
    assert torch.allclose(block, full[40:94, 40:94])  # the same block, computed two ways
    vals, _ = dominant(block)
    by_prefix = hessian.top_eigenvalues(model, batches, k=2, tol=1e-7, max_iter=2000, params="2.")
    by_list = hessian.top_eigenvalues(model, batches, k=2, tol=1e-7, max_iter=2000, params=names)
    by_pred = hessian.top_eigenvalues(
        model, batches, k=2, tol=1e-7, max_iter=2000, params=lambda n: n.startswith("2.")
    )
    assert by_prefix.param_names == by_list.param_names == by_pred.param_names == names
    for eig in (by_prefix, by_list, by_pred):
        assert eig.eigenvalues == pytest.approx(vals[:2].tolist(), rel=1e-3)
        assert [t.shape for t in eig.eigenvectors[0]] == [torch.Size([6, 8]), torch.Size([6])]
    tr = hessian.trace(model, batches, n_samples=60, params="2.")
    assert abs(tr.estimate - block.trace().item()) <= 3 * tr.stderr
    with pytest.raises(ValueError, match="unknown parameter"):
        hessian.top_eigenvalues(model, batches, params=["2.weight", "nope"])
    with pytest.raises(ValueError, match="selects no parameter"):
        hessian.trace(model, batches, params="layer9.")


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_bn_mode_selects_the_batchnorm_statistics(bn_mode: str) -> None:
    model, batches = tiny_convbn(), conv_batches()
    with torch.no_grad():  # non-trivial running stats, so eval and train Hessians differ
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    vals, _ = dominant(dense_hessian(model, batches, bn_train=bn_mode == "train"))
    other, _ = dominant(dense_hessian(model, batches, bn_train=bn_mode != "train"))
    eig = hessian.top_eigenvalues(model, batches, k=1, tol=1e-7, max_iter=2000, bn_mode=bn_mode)
    assert eig.eigenvalues[0] == pytest.approx(vals[0].item(), rel=1e-3)
    assert abs(vals[0] - other[0]).item() > 1e-2 * abs(vals[0].item())


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_model_rng_grads_and_buffers_left_as_found(bn_mode: str) -> None:
    model, batches = tiny_convbn(), conv_batches()
    model.train()
    model[0].eval()  # mixed modes must come back per module
    model[5].bias.requires_grad_(False)
    loss = F.cross_entropy(model(batches[0][0]), batches[0][1])
    loss.backward()  # grads present (and BN stats moved once, before the snapshot)
    model[0].weight.grad = None  # and one missing grad
    before = snapshot(model)
    hessian.top_eigenvalues(model, batches, k=2, max_iter=20, bn_mode=bn_mode)
    assert_same(before, snapshot(model))
    hessian.trace(model, batches, n_samples=5, bn_mode=bn_mode)
    assert_same(before, snapshot(model))
    hessian.density(model, batches, n_iter=10, bn_mode=bn_mode)
    assert_same(before, snapshot(model))
    hessian.hessian_summary(model, batches, k=2, trace_samples=5, bn_mode=bn_mode, max_iter=20)
    assert_same(before, snapshot(model))


def test_frozen_parameters_are_excluded_by_default_but_selectable() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    model[4].weight.requires_grad_(False)
    names = [n for n, _ in model.named_parameters()]
    assert hessian.select_parameters(model) == [n for n in names if n != "4.weight"]
    eig = hessian.top_eigenvalues(model, batches, params=["4.weight"], max_iter=5)
    assert eig.param_names == ["4.weight"]
    assert model[4].weight.requires_grad is False


def test_deterministic_for_a_seed() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    a = hessian.top_eigenvalues(model, batches, k=2, max_iter=30, seed=5)
    b = hessian.top_eigenvalues(model, batches, k=2, max_iter=30, seed=5)
    assert a.eigenvalues == b.eigenvalues and a.iterations == b.iterations
    assert all(torch.equal(x, y) for x, y in zip(a.eigenvectors[1], b.eigenvectors[1], strict=True))
    t1, t2, t3 = (hessian.trace(model, batches, n_samples=10, seed=s) for s in (5, 5, 6))
    assert t1 == t2 and t1.estimate != t3.estimate
    d1, d2 = (hessian.density(model, batches, n_iter=15, n_v=2, seed=5) for _ in range(2))
    assert d1.eigenvalues == d2.eigenvalues and d1.weights == d2.weights


def test_summary_is_json_ready() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    summary = hessian.hessian_summary(model, batches, k=3, trace_samples=20, seed=4, params="2.")
    json.dumps(summary, allow_nan=False)
    assert summary["lambda_max"] == summary["top_eigenvalues"][0]
    assert len(summary["top_eigenvalues"]) == 3 and summary["n_samples"] == 20
    assert summary["bn_mode"] == "eval" and summary["seed"] == 4 and summary["params"] == "2."
    assert summary["param_names"] == ["2.weight", "2.bias"] and summary["num_params"] == 54
    assert summary["num_examples"] == 24 and summary["trace_stderr"] > 0
    same_trace = hessian.trace(model, batches, n_samples=20, seed=4, params="2.")
    assert summary["trace"] == same_trace.estimate


def test_bad_arguments_fail_with_a_clear_message() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    with pytest.raises(ValueError, match="bn_mode"):
        hessian.trace(model, batches, bn_mode="frozen")
    with pytest.raises(ValueError, match="k="):
        hessian.top_eigenvalues(model, batches, k=0)
    with pytest.raises(ValueError, match="batches"):
        hessian.trace(model, [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model, batches = tiny_convbn(), conv_batches()
    cpu = hessian.top_eigenvalues(model, batches, k=2, tol=1e-7, max_iter=2000)
    gpu = hessian.top_eigenvalues(model.cuda(), batches, k=2, tol=1e-7, max_iter=2000)
    assert gpu.eigenvalues == pytest.approx(cpu.eigenvalues, rel=1e-3)
    assert gpu.eigenvectors[0][0].device.type == "cuda"
    dens = hessian.density(model, batches, n_iter=20)
    assert sum(dens.weights) == pytest.approx(1.0)


@pytest.mark.parametrize("bn_train", [False, True])
def test_kept_graphs_give_the_dense_products_with_one_gradient_pass_per_batch(bn_train: bool) -> None:
    model = tiny_convbn()
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(n, 1, 5, 5, generator=g), torch.randint(0, 2, (n,), generator=g)) for n in (5, 3)]
    dense = dense_hessian(model, batches, bn_train=bn_train)
    model.eval()
    if bn_train:
        for m in hessian_bn(model):
            m.train()
    kept = hessian._HessianOperator(model, batches, None, None)
    fresh = hessian._HessianOperator(model, batches, None, None, reuse_graph=False)
    for _ in range(3):
        v = torch.randn(kept.dim, generator=g)
        want = dense @ v.double()
        assert torch.allclose(kept(v).double(), want, rtol=1e-4, atol=1e-5)
        assert torch.allclose(fresh(v).double(), want, rtol=1e-4, atol=1e-5)
    # Kept: forward + gradient once per batch for all products; fresh: once per batch and product.
    assert kept.first_order_passes == len(batches) and fresh.first_order_passes == 3 * len(batches)


def hessian_bn(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_out_of_memory_with_kept_graphs_falls_back_to_recomputing(monkeypatch: pytest.MonkeyPatch) -> None:
    model, batches = tiny_mlp(), mlp_batches()
    op = hessian._HessianOperator(model, batches, None, None)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    expected = hessian._HessianOperator(model, batches, None, None, reuse_graph=False)(v)
    real = op._product

    def no_room(vs: list, reuse: bool) -> torch.Tensor:
        if reuse:
            raise torch.OutOfMemoryError("kept graphs do not fit")
        return real(vs, reuse)

    monkeypatch.setattr(op, "_product", no_room)
    assert torch.allclose(op(v), expected) and not op.reuse_graph and op._graphs is None
