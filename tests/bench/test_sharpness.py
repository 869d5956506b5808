"""ASAM's adaptive sharpness (bench.sharpness) against a float64 hand computation of the paper's formula, its
scale invariance where the plain sharpness is not invariant, and its column in metrics.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from bench.config import RunConfig
from bench.run import run
from bench.sharpness import adaptive_sharpness, sam_sharpness


def hand_adaptive_sharpness(w: torch.Tensor, b: torch.Tensor, batches: list, rho: float) -> float:
    """Softmax regression in float64, the gradient written out: dL/dz = (softmax(z) - onehot)/B, then
    e = rho T² g / ||T g|| with T = |w| elementwise (ASAM, Kwon et al. 2021, eq. for the elementwise T_w)."""
    w, b = w.detach().double(), b.detach().double()

    def loss(w_: torch.Tensor, b_: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = x @ w_.T + b_
        return (torch.logsumexp(z, 1) - z[torch.arange(len(y)), y]).mean()

    rises = []
    for x, y in batches:
        x = x.double()
        z = x @ w.T + b
        dz = (torch.softmax(z, 1) - torch.eye(w.shape[0], dtype=torch.float64)[y]) / len(y)
        gw, gb = dz.T @ x, dz.sum(0)
        tw, tb = w.abs() * gw, b.abs() * gb
        norm = torch.sqrt((tw ** 2).sum() + (tb ** 2).sum())
        ew, eb = rho * w.abs() * tw / norm, rho * b.abs() * tb / norm
        rises.append(float(loss(w + ew, b + eb, x, y) - loss(w, b, x, y)))
    return sum(rises) / len(rises)


def test_adaptive_sharpness_matches_a_float64_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(5, 4)
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 5, generator=g))
        model.bias.copy_(torch.randn(4, generator=g))
    batches = [(torch.randn(8, 5, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(2)]
    ours = adaptive_sharpness(model, batches, rho=0.5)
    assert ours == pytest.approx(hand_adaptive_sharpness(model.weight, model.bias, batches, 0.5), rel=1e-4)
    assert ours != pytest.approx(sam_sharpness(model, batches, rho=0.5), rel=1e-2)  # not the plain one


def test_adaptive_sharpness_is_invariant_to_rescaling_layers_and_the_plain_one_is_not() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    batches = [(torch.randn(20, 6), torch.randint(0, 3, (20,)))]
    rescaled = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    rescaled.load_state_dict(model.state_dict())
    with torch.no_grad():  # ReLU(c z)/c = ReLU(z): the same function, other weights
        rescaled[0].weight.mul_(4.0)
        rescaled[0].bias.mul_(4.0)
        rescaled[2].weight.div_(4.0)
    x = batches[0][0]
    assert torch.allclose(model(x), rescaled(x), atol=1e-5)
    assert adaptive_sharpness(rescaled, batches, 0.5) == pytest.approx(adaptive_sharpness(model, batches, 0.5),
                                                                       rel=1e-4)
    assert sam_sharpness(rescaled, batches, 0.05) != pytest.approx(sam_sharpness(model, batches, 0.05), rel=1e-2)


def test_the_adaptive_column_is_logged_beside_the_plain_one(tmp_path: Path) -> None:
    config = RunConfig.from_dict(dict(dataset="synthetic", model="mlp_tiny", epochs=2, batch_size=16, lr=0.05,
                                      train_subset=64, device="cpu", out=str(tmp_path), num_workers=0,
                                      progress=False, sharpness=True, sharpness_samples=32))
    run(config, command="test")
    metrics = pd.read_csv(config.run_dir() / "metrics.csv")
    assert metrics["adaptive_sharpness"].notna().all() and (metrics["adaptive_sharpness_time_s"] > 0).all()
    assert (metrics["adaptive_sharpness"] != metrics["sharpness"]).all()
