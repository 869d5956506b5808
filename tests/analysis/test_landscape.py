"""Loss landscapes checked against closed-form quadratics and hand-built references."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.measure import landscape


class Quadratic(nn.Module):
    """Outputs its weight; with ``quadratic_loss`` the loss is 0.5 (w - w*)^T A (w - w*)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


def make_quadratic() -> tuple[Quadratic, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T / 12 + torch.eye(12, dtype=torch.float64)
    w_star = torch.randn(12, generator=g, dtype=torch.float64)
    return Quadratic(), a, w_star


def quadratic_loss_fn(a: torch.Tensor, w_star: torch.Tensor):
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        r = outputs.reshape(-1) - w_star
        return 0.5 * r @ a @ r

    return loss


FAKE_BATCH = [(torch.zeros(1, 1), torch.zeros(1))]


def closed_form(a: torch.Tensor, w_star: torch.Tensor, w: torch.Tensor) -> float:
    r = w.reshape(-1) - w_star
    return float(0.5 * r @ a @ r)


def tiny_convbn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # only builds the fixture
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def conv_batches(seed: int = 2, n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "momenta": [getattr(m, "momentum", None) for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["modes"] == after["modes"] and before["momenta"] == after["momenta"]
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k  # bit-exact, not approximately
    for g0, g1 in zip(before["grads"], after["grads"], strict=True):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert torch.equal(before["rng"], after["rng"])


def test_filter_normalised_direction_matches_each_weight_filter() -> None:
    model = tiny_convbn()
    rng = torch.get_rng_state()
    d = landscape.random_direction(model, seed=3)
    assert torch.equal(rng, torch.get_rng_state())
    for (name, p), t in zip(model.named_parameters(), d, strict=True):
        assert t.shape == p.shape and t.dtype == p.dtype
        if p.dim() > 1:  # conv (4, 2, 3, 3) and linear (3, 4) weights
            for i in range(p.shape[0]):
                assert t[i].norm().item() == pytest.approx(p[i].detach().norm().item(), rel=1e-5), name
            assert not torch.allclose(t, p.detach())  # a random direction, not the weight itself
        else:  # conv/linear bias, BN weight and bias
            assert torch.count_nonzero(t) == 0, name


def test_direction_options() -> None:
    model = tiny_convbn()
    with torch.no_grad():
        model[1].bias.uniform_(-1, 1)  # as after training (init is 0, whose direction would be 0 too)
    with_bn = landscape.random_direction(model, seed=3, ignore_bn_and_bias=False)
    default = landscape.random_direction(model, seed=3)
    for p, t, t0 in zip(model.parameters(), with_bn, default, strict=True):
        if p.dim() <= 1:
            assert t.norm().item() == pytest.approx(p.detach().norm().item(), rel=1e-5)
            assert torch.count_nonzero(t) == t.numel()
        else:
            assert torch.equal(t, t0)  # including 1-D parameters does not change the other draws
    raw = landscape.random_direction(model, seed=3, filter_normalize=False)
    g = torch.Generator().manual_seed(3)
    expected = [torch.randn(p.shape, generator=g) for p in model.parameters()]
    assert torch.equal(raw[0], expected[0]) and torch.count_nonzero(raw[1]) == 0
    assert torch.equal(landscape.random_direction(model, seed=3)[0], default[0])
    assert not torch.equal(landscape.random_direction(model, seed=4)[0], default[0])


def test_1d_curve_equals_the_quadratic_formula() -> None:
    model, a, w_star = make_quadratic()
    w0 = model.w.detach().clone()
    d = landscape.random_direction(model, seed=5)
    assert torch.count_nonzero(d[0]) == 12  # a 2-D weight: filter-normalised, not zeroed
    alphas = np.linspace(-2.0, 2.0, 9)
    res = landscape.loss_curve_1d(
        model, FAKE_BATCH, alphas=alphas, seed=5, loss_fn=quadratic_loss_fn(a, w_star)
    )
    expected = [closed_form(a, w_star, w0 + al * d[0]) for al in alphas]
    np.testing.assert_allclose(res["loss"], expected, rtol=1e-12)
    np.testing.assert_array_equal(res["alphas"], alphas)
    assert np.isnan(res["accuracy"]).all()  # outputs are not class logits
    default = landscape.loss_curve_1d(model, FAKE_BATCH, loss_fn=quadratic_loss_fn(a, w_star))
    np.testing.assert_array_equal(default["alphas"], np.linspace(-1, 1, 51))


def test_2d_surface_equals_the_quadratic_formula_on_the_grid() -> None:
    model, a, w_star = make_quadratic()
    w0 = model.w.detach().clone()
    g = torch.Generator().manual_seed(9)
    d1 = [torch.randn(3, 4, generator=g, dtype=torch.float64)]
    d2 = [torch.randn(3, 4, generator=g, dtype=torch.float64)]
    xs, ys = np.linspace(-1, 1, 5), np.linspace(-0.5, 1.5, 3)  # not square: catches a transpose
    res = landscape.loss_surface_2d(model, FAKE_BATCH, (d1, d2), xs, ys, loss_fn=quadratic_loss_fn(a, w_star))
    assert res["loss"].shape == (3, 5) and res["accuracy"].shape == (3, 5)
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            assert res["loss"][j, i] == pytest.approx(
                closed_form(a, w_star, w0 + x * d1[0] + y * d2[0]), rel=1e-12
            )
    # Default directions are the filter-normalised ones from seed and seed + 1.
    default = landscape.loss_surface_2d(
        model, FAKE_BATCH, xs=xs, ys=ys, seed=2, loss_fn=quadratic_loss_fn(a, w_star)
    )
    e1, e2 = landscape.random_direction(model, seed=2)[0], landscape.random_direction(model, seed=3)[0]
    assert default["loss"][2, 0] == pytest.approx(
        closed_form(a, w_star, w0 + xs[0] * e1 + ys[2] * e2), rel=1e-12
    )
    assert torch.equal(model.w.detach(), w0)


def eval_loss(model: nn.Module, batches: list) -> float:
    model.eval()
    with torch.no_grad():
        total = sum(F.cross_entropy(model(x), y, reduction="sum").item() for x, y in batches)
    return total / sum(len(y) for _, y in batches)


def test_interpolation_line_hits_both_checkpoints() -> None:
    a_model, b_model, model = tiny_convbn(0), tiny_convbn(1), tiny_convbn(2)
    batches = conv_batches()
    b_model.train()
    with torch.no_grad():
        b_model(batches[0][0])  # different BN statistics too
    state_a, state_b = a_model.state_dict(), b_model.state_dict()
    direction = landscape.interpolation_direction(state_a, state_b)
    assert torch.equal(direction["1.running_mean"], state_b["1.running_mean"] - state_a["1.running_mean"])
    assert "1.num_batches_tracked" not in direction
    before = snapshot(model)
    res = landscape.loss_line(model, state_a, state_b, batches)
    assert_same(before, snapshot(model))
    alphas = res["alphas"]
    assert len(alphas) == 31 and alphas[0] == -0.25 and alphas[-1] == 1.25
    i0, i1 = int(np.argmin(abs(alphas))), int(np.argmin(abs(alphas - 1)))
    assert res["loss"][i0] == pytest.approx(eval_loss(a_model, batches), rel=1e-6)
    assert res["loss"][i1] == pytest.approx(eval_loss(b_model, batches), rel=1e-6)
    half = copy.deepcopy(a_model)
    half.load_state_dict(
        {k: (v + state_b[k]) / 2 if v.is_floating_point() else v for k, v in state_a.items()}
    )
    mid = landscape.loss_line(model, state_a, state_b, batches, alphas=[0.5])
    assert mid["loss"][0] == pytest.approx(eval_loss(half, batches), rel=1e-5)
    assert 0.0 <= res["accuracy"].min() and res["accuracy"].max() <= 1.0
    # The same line through loss_curve_1d on a model holding a.
    via_direction = landscape.loss_curve_1d(a_model, batches, direction, alphas=[0.0, 0.5])
    assert via_direction["loss"] == pytest.approx([res["loss"][i0], mid["loss"][0]], rel=1e-5)


def test_line_from_the_models_own_state_dict() -> None:
    # model.state_dict() shares storage with the weights that the sweep overwrites.
    model, other, batches = tiny_convbn(0), tiny_convbn(1), conv_batches()
    own = model.state_dict()
    copied = {k: v.clone() for k, v in own.items()}
    res = landscape.loss_line(model, own, other.state_dict(), batches, alphas=[0.5, 0.0, 1.0])
    ref = landscape.loss_line(model, copied, other.state_dict(), batches, alphas=[0.5, 0.0, 1.0])
    np.testing.assert_array_equal(res["loss"], ref["loss"])
    assert res["loss"][1] == pytest.approx(eval_loss(model, batches), rel=1e-6)
    # A direction that is the weights themselves: theta + alpha * theta.
    scaled = landscape.loss_curve_1d(model, batches, list(model.parameters()), alphas=[1.0, 0.0])
    assert scaled["loss"][1] == pytest.approx(eval_loss(model, batches), rel=1e-6)
    assert all(torch.equal(v, copied[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_weights_mode_grads_and_rng_restored(bn_mode: str) -> None:
    model, batches = tiny_convbn(), conv_batches()
    model.train()
    model[0].eval()  # mixed modes come back per module
    F.cross_entropy(model(batches[0][0]), batches[0][1]).backward()
    model[6].bias.grad = None
    before = snapshot(model)
    recal = batches if bn_mode == "eval" else None
    landscape.loss_curve_1d(model, batches, alphas=[-1.0, 0.3, 2.0], bn_mode=bn_mode, recalibrate_bn=recal)
    assert_same(before, snapshot(model))
    landscape.loss_surface_2d(
        model, batches, xs=[-1, 1], ys=[0.0, 0.5], bn_mode=bn_mode, recalibrate_bn=recal
    )
    assert_same(before, snapshot(model))


def test_dropout_is_off_and_bn_mode_is_respected() -> None:
    model, batches = tiny_convbn(), conv_batches()
    with torch.no_grad():
        model[1].running_mean.fill_(0.7)  # stale statistics, so eval and train modes differ
    model.train()
    at0 = landscape.loss_curve_1d(model, batches, alphas=[0.0, 0.0])
    assert at0["loss"][0] == at0["loss"][1] == pytest.approx(eval_loss(model, batches), rel=1e-6)
    train_mode = landscape.loss_curve_1d(model, batches, alphas=[0.0], bn_mode="train")
    reference = copy.deepcopy(model).eval()
    reference[1].train()
    with torch.no_grad():
        expected = np.mean([F.cross_entropy(reference(x), y).item() for x, y in batches])
    assert train_mode["loss"][0] == pytest.approx(expected, rel=1e-6)
    assert abs(train_mode["loss"][0] - at0["loss"][0]) > 1e-3
    with pytest.raises(ValueError, match="bn_mode"):
        landscape.loss_curve_1d(model, batches, bn_mode="batch")


def test_bn_recalibration_uses_fresh_statistics_at_each_point() -> None:
    model, batches = tiny_convbn(), conv_batches()
    recal = conv_batches(seed=7, n=3)
    d = landscape.random_direction(model, seed=1)
    res = landscape.loss_curve_1d(model, batches, d, alphas=[0.0, 0.8], recalibrate_bn=recal)
    plain = landscape.loss_curve_1d(model, batches, d, alphas=[0.0, 0.8])
    for k, alpha in enumerate([0.0, 0.8]):
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for p, t in zip(ref.parameters(), d, strict=True):
                p.add_(alpha * t)
        # Cumulative average over the recalibration batches of each batch's mean and unbiased var.
        ref.eval()
        with torch.no_grad():
            feats = [ref[0](x).transpose(0, 1).reshape(4, -1) for x, _ in recal]
            ref[1].running_mean.copy_(torch.stack([f.mean(dim=1) for f in feats]).mean(dim=0))
            ref[1].running_var.copy_(torch.stack([f.var(dim=1) for f in feats]).mean(dim=0))
        assert res["loss"][k] == pytest.approx(eval_loss(ref, batches), rel=1e-4)
    assert abs(res["loss"][1] - plain["loss"][1]) > 1e-4


def test_npz_round_trip_is_atomic(tmp_path) -> None:
    model, a, w_star = make_quadratic()
    res = landscape.loss_surface_2d(
        model, FAKE_BATCH, xs=[0, 1], ys=[0, 1, 2], loss_fn=quadratic_loss_fn(a, w_star)
    )
    meta = {"seed": 0, "kind": "2d", "batches": 1, "model": "quadratic"}
    path = tmp_path / "sub" / "surface.npz"
    landscape.save_landscape(path, res, meta)
    landscape.save_landscape(path, res, {**meta, "seed": 1})  # overwrite in place
    loaded, loaded_meta = landscape.load_landscape(path)
    assert loaded.keys() == res.keys()
    for k in res:
        np.testing.assert_array_equal(loaded[k], res[k])
    assert loaded_meta == {**meta, "seed": 1}
    assert os.listdir(path.parent) == ["surface.npz"]  # no temporary file left behind
    with pytest.raises(TypeError):
        landscape.save_landscape(path, res, {"bad": object()})
    assert os.listdir(path.parent) == ["surface.npz"]
    assert landscape.load_landscape(path)[1] == {**meta, "seed": 1}  # a failed save leaves the old file


def test_plots_write_non_empty_files(tmp_path) -> None:
    model, batches = tiny_convbn(), conv_batches(n=1)
    curve = landscape.loss_curve_1d(model, batches, alphas=np.linspace(-1, 1, 5))
    other = {**curve, "loss": curve["loss"] * 1.1}
    landscape.plot_1d({"sam": curve, "sgd": other}, tmp_path / "curve.png", title="1d")
    model_q, a, w_star = make_quadratic()
    surface = landscape.loss_surface_2d(
        model_q,
        FAKE_BATCH,
        xs=np.linspace(-1, 1, 4),
        ys=np.linspace(-1, 1, 3),
        loss_fn=quadratic_loss_fn(a, w_star),
    )
    landscape.plot_1d(
        {"q": {"alphas": surface["xs"], "loss": surface["loss"][0], "accuracy": surface["accuracy"][0]}},
        tmp_path / "q.pdf",
    )
    landscape.plot_2d(surface, tmp_path / "contour.png")
    landscape.plot_2d(surface, tmp_path / "surface.png", kind="surface", vmax=5.0)
    for name in ("curve.png", "contour.png", "surface.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert (tmp_path / "q.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match="kind"):
        landscape.plot_2d(surface, tmp_path / "x.png", kind="heatmap")


def test_bad_directions_fail_clearly() -> None:
    model, batches = tiny_convbn(), conv_batches(n=1)
    d = landscape.random_direction(model)
    with pytest.raises(ValueError, match="parameters"):
        landscape.loss_curve_1d(model, batches, d[:-1])
    with pytest.raises(ValueError, match="shape"):
        landscape.loss_curve_1d(model, batches, [t.T if t.dim() == 2 else t for t in d])
    with pytest.raises(ValueError, match="lacks"):
        landscape.loss_curve_1d(model, batches, {"nope": torch.zeros(1)})
