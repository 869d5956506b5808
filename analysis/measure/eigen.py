"""Top-k Hessian eigenpairs from Hessian-vector products: Lanczos (the default) or power iteration.

* ``lanczos``: implicitly restarted Lanczos, scipy's ``eigsh`` (ARPACK) over the HVP operator wrapped as a
  ``LinearOperator`` (float64 vectors in scipy, the product itself in float32 on the model's device). It
  finds the k *largest* eigenvalues (``which="LA"``: λ_max is the largest eigenvalue, not the largest in
  magnitude) and stops when every Ritz pair's residual is at most ``tol`` times its Ritz value; the
  eigenvalue error is then of the order of the squared residual over the gap, far below ``tol``. Chosen
  over curvlinops because it needs no new dependency and runs on our own operator, which keeps each
  batch's gradient graph across products; measured against power iteration in results/hessian-cost/.
* ``power``: power iteration with deflation, one eigenvalue after another, each stopped when its
  Rayleigh quotient changes by at most ``tol`` (relative) between iterations, or after ``max_iter``
  products. It finds eigenvalues of largest *magnitude* (as PyHessian does), and on close eigenvalues
  the relative-change stop can end early with the pair mixed up.

Both report the products they spent; ``hvps_per_measurement`` gives the figure a cost estimate uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from analysis.measure.hvp import HessianOperator
from analysis.measure.restore import progress

ALGORITHMS = ("lanczos", "power")
DEFAULT_ALGORITHM = "lanczos"


@dataclass
class EigenSolution:
    values: list[float]  # largest first (power: largest magnitude first)
    vectors: list[Tensor]  # flat, unit norm, on the operator's device
    iterations: list[int]  # power: products spent on each eigenvalue; lanczos: []
    hvps: int  # Hessian-vector products spent in all
    algorithm: str


def check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is not allowed; use one of {', '.join(ALGORITHMS)}")


def default_ncv(k: int, dim: int) -> int:
    """Lanczos vectors kept between restarts: 2k + 8, at most dim. ARPACK checks convergence only once its
    basis is full, so this is the fewest products a measurement takes; scipy's default, max(2k + 1, 20), would
    spend 20 on top-1. Not tuned beyond that (results/hessian-cost/table.md measures this default)."""
    return min(dim, 2 * k + 8)


def hvps_per_measurement(k: int, trace_samples: int, algorithm: str = DEFAULT_ALGORITHM) -> int:
    """Hessian-vector products of one measurement, for cost estimates (e.g. `grid --estimate`).

    From results/hessian-cost/table.md (default tolerance 1e-3, cnn_small and resnet14_s2, 256 images):
    Lanczos took ncv + 1 products where its first check converged and up to 5 more after a restart (11-16
    for top-1, 15 for top-3), so ncv + 6; power iteration up to 45 per eigenvalue. Plus one product per
    Hutchinson probe of the trace.
    """
    check_algorithm(algorithm)
    eigen = default_ncv(k, 10**9) + 6 if algorithm == "lanczos" else 45 * k
    return eigen + trace_samples


def orthogonalise(v: Tensor, basis: list[Tensor]) -> Tensor:
    # Two passes of Gram-Schmidt: one leaves float32 round-off of the size of the removed part.
    for _ in range(2):
        for u in basis:
            v = v - (u @ v) * u
    return v


def power_iteration(op: HessianOperator, k: int, max_iter: int, tol: float, seed: int) -> EigenSolution:
    _check_k(k, op.dim)
    gen = torch.Generator().manual_seed(seed)
    start = op.products
    values: list[float] = []
    vectors: list[Tensor] = []
    iterations: list[int] = []
    for _ in progress(range(k), desc="hessian eigen", total=k):
        v = orthogonalise(op.random(gen, "gaussian"), vectors)
        v = v / v.norm()
        value, steps = 0.0, 0
        for steps in range(1, max_iter + 1):
            # Deflation: work in the complement of the eigenvectors already found.
            hv = orthogonalise(op(v), vectors)
            new_value = float(v @ hv)
            norm = hv.norm()
            if norm == 0:  # v is in the null space of the deflated Hessian
                value = 0.0
                break
            v = hv / norm
            converged = steps > 1 and abs(new_value - value) <= tol * abs(value) + 1e-30
            value = new_value
            if converged:
                break
        values.append(value)
        vectors.append(v)
        iterations.append(steps)
    return EigenSolution(values, vectors, iterations, op.products - start, "power")


def lanczos(op: HessianOperator, k: int, max_iter: int, tol: float, seed: int,
            ncv: int | None = None) -> EigenSolution:
    """The k largest eigenpairs by scipy's eigsh; ``max_iter`` caps ARPACK's restarts."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    _check_k(k, op.dim)
    start = op.products
    gen = torch.Generator().manual_seed(seed)
    v0 = op.random(gen, "gaussian")
    ncv = ncv or default_ncv(k, op.dim)
    if k >= op.dim - 1 or ncv >= op.dim:  # ARPACK needs k < ncv < dim: so small a Hessian is built whole
        vals, vecs = _dense(op)
    else:
        def matvec(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1)).to(op.device)
            return op(v).to(torch.float64).cpu().numpy()

        operator = LinearOperator((op.dim, op.dim), matvec=matvec, dtype=np.float64)
        try:
            vals, vecs = eigsh(operator, k=k, which="LA", tol=tol, v0=v0.double().cpu().numpy(), ncv=ncv,
                               maxiter=max_iter)
        except ArpackNoConvergence as exc:
            raise RuntimeError(f"Lanczos did not reach tol={tol} for the top {k} eigenvalues in {max_iter} "
                               f"restarts ({op.products - start} products): raise max_iter or tol") from exc
    order = np.argsort(vals)[::-1][:k]
    vectors = [torch.from_numpy(np.ascontiguousarray(vecs[:, i])).to(torch.float32).to(op.device) for i in order]
    vectors = [v / v.norm() for v in vectors]
    return EigenSolution([float(vals[i]) for i in order], vectors, [], op.products - start, "lanczos")


def solve(op: HessianOperator, k: int, *, algorithm: str, max_iter: int, tol: float, seed: int,
          ncv: int | None = None) -> EigenSolution:
    check_algorithm(algorithm)
    if algorithm == "power":
        return power_iteration(op, k, max_iter, tol, seed)
    return lanczos(op, k, max_iter, tol, seed, ncv)


def _dense(op: HessianOperator) -> tuple[np.ndarray, np.ndarray]:
    eye = torch.eye(op.dim, dtype=torch.float32, device=op.device)
    h = torch.stack([op(eye[i]) for i in range(op.dim)]).to(torch.float64).cpu().numpy()
    return np.linalg.eigh((h + h.T) / 2)


def _check_k(k: int, dim: int) -> None:
    if not 1 <= k <= dim:
        raise ValueError(f"k={k} must be between 1 and the number of selected weights ({dim})")
