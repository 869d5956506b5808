"""Lanczos top-k (analysis.measure.eigen) against dense Hessians: a tiny network away from a minimum
(negative eigenvalues), quadratics with a chosen spectrum (a close triplet, an all-negative top), and the
Hessian-vector products each solver reports, counted independently."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from analysis.measure import hessian
from analysis.measure.hvp import HessianOperator
from tests.analysis.test_hessian import dense_hessian, flat, mlp_batches, tiny_mlp


class Quadratic(nn.Module):
    """The loss 0.5 wᵀAw (through `quadratic_loss`): its Hessian is A, whatever the batch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, generator=torch.Generator().manual_seed(7)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], -1)


def with_spectrum(eigenvalues: list[float], seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric float64 matrix with these eigenvalues in a random orthonormal basis, and that basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T, q


def quadratic_loss(a: torch.Tensor):
    a32 = a.to(torch.float32)
    return lambda out, _targets: 0.5 * ((out @ a32) * out).sum(1).mean()


BATCH = [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))]


def test_lanczos_top_k_matches_the_dense_spectrum_of_a_network_with_negative_eigenvalues() -> None:
    model, batches = tiny_mlp(), mlp_batches()
    dense = torch.linalg.eigvalsh(dense_hessian(model, batches)).flip(0)  # largest first
    assert dense.min() < -1e-3  # away from a minimum: negative curvature exists
    eig = hessian.top_eigenvalues(model, batches, k=5, tol=1e-8)
    assert eig.algorithm == "lanczos"
    assert eig.eigenvalues == pytest.approx(dense[:5].tolist(), rel=1e-4, abs=1e-6)
    h = dense_hessian(model, batches)
    for value, vec in zip(eig.eigenvalues, eig.eigenvectors, strict=True):
        v = flat(vec)
        assert torch.linalg.vector_norm(h @ v - value * v) <= 1e-3 * abs(value) + 1e-5  # an eigenvector


def test_close_eigenvalues_are_resolved_and_the_largest_not_the_largest_magnitude() -> None:
    rest = torch.linspace(-5.0, 5.0, 37).tolist()
    spectrum = [10.0, 9.995, 9.99, *rest, -15.0]  # a close triplet on top, a larger negative one
    a, q = with_spectrum(spectrum)
    model = Quadratic(len(spectrum))
    eig = hessian.top_eigenvalues(model, BATCH, k=3, tol=1e-6, loss_fn=quadratic_loss(a))
    assert eig.eigenvalues == pytest.approx([10.0, 9.995, 9.99], abs=2e-5)
    # each vector lies in its own eigenvalue's direction (the close pair not mixed up)
    for i, vec in enumerate(eig.eigenvectors):
        assert abs(float(flat(vec) @ q[:, i])) > 0.99
    # power iteration finds the largest magnitude first, as documented
    power = hessian.top_eigenvalues(model, BATCH, k=1, tol=1e-7, max_iter=2000, algorithm="power",
                                    loss_fn=quadratic_loss(a))
    assert power.eigenvalues[0] == pytest.approx(-15.0, rel=1e-3)


def test_an_all_negative_top_is_found_in_order() -> None:
    spectrum = [-1.0, -1.0005, -1.001, *torch.linspace(-2.0, -20.0, 37).tolist()]
    a, _ = with_spectrum(spectrum, seed=5)
    eig = hessian.top_eigenvalues(Quadratic(len(spectrum)), BATCH, k=3, tol=1e-7, loss_fn=quadratic_loss(a))
    assert eig.eigenvalues == pytest.approx([-1.0, -1.0005, -1.001], abs=2e-5)


@pytest.mark.parametrize("algorithm", ["lanczos", "power"])
def test_the_hvp_count_is_every_product_taken(algorithm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = HessianOperator.__call__
    monkeypatch.setattr(HessianOperator, "__call__", lambda self, v: calls.append(1) or real(self, v))
    model, batches = tiny_mlp(), mlp_batches()
    eig = hessian.top_eigenvalues(model, batches, k=2, algorithm=algorithm)
    assert eig.hvps == len(calls) > 2
    if algorithm == "power":
        assert sum(eig.iterations) == eig.hvps
    calls.clear()
    summary = hessian.hessian_summary(model, batches, k=2, trace_samples=7, algorithm=algorithm)
    json.dumps(summary, allow_nan=False)
    assert summary["algorithm"] == algorithm
    assert summary["hvps"] == len(calls) == summary["eigen_hvps"] + 7


def test_a_tiny_hessian_is_built_whole_and_an_unknown_algorithm_refused() -> None:
    a, _ = with_spectrum([3.0, 1.0, -2.0])
    eig = hessian.top_eigenvalues(Quadratic(3), BATCH, k=3, loss_fn=quadratic_loss(a))
    assert eig.eigenvalues == pytest.approx([3.0, 1.0, -2.0], abs=1e-5) and eig.hvps == 3
    with pytest.raises(ValueError, match="algorithm"):
        hessian.top_eigenvalues(Quadratic(3), BATCH, algorithm="arnoldi", loss_fn=quadratic_loss(a))


def test_the_cli_offers_the_solvers_algorithms_default_first() -> None:
    from analysis import flatness_cli
    from analysis.measure import eigen

    assert flatness_cli.ALGORITHMS == eigen.ALGORITHMS and eigen.ALGORITHMS[0] == eigen.DEFAULT_ALGORITHM
    assert eigen.hvps_per_measurement(1, 0) < eigen.hvps_per_measurement(1, 0, "power")
    assert eigen.hvps_per_measurement(3, 50) == eigen.hvps_per_measurement(3, 0) + 50
