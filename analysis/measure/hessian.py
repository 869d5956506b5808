"""Hessian of the training loss over given batches: top eigenvalues, trace and spectral density.

All three are matrix-free: they only need Hessian-vector products (HVPs, analysis.measure.hvp), computed
exactly by double backprop; the top-k solvers are in analysis.measure.eigen. The loss is the average over
all given batches weighted by batch size, i.e. the mean loss over the union of their examples (with
``bn_mode="train"`` each batch is normalised by its own statistics).

Parameter subsets (``params``), for restricting the Hessian to one block or layer:

* ``None``: every parameter that requires grad;
* a string: every parameter whose name starts with it, e.g. ``"layer1."`` or ``"fc.weight"``;
* a list of names: exactly those (an unknown name is an error);
* a callable ``name -> bool``: the parameters it accepts.

The result is the Hessian block of those parameters, all others held fixed.

Every function leaves the model as found: training flags, ``.grad``, ``requires_grad``, weights,
BatchNorm buffers and the global RNG. HVPs run on detached float32 copies of the weights through
``torch.func.functional_call``, so nothing of the model itself is ever differentiated or updated;
random vectors come from a local generator seeded by ``seed``.

Unlike PyHessian 0.1, ``density`` does not call the removed ``torch.eig`` and nothing silently
switches the model to eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from analysis.measure.eigen import ALGORITHMS, DEFAULT_ALGORITHM, check_algorithm, hvps_per_measurement, solve
from analysis.measure.hvp import HessianOperator, ParamSpec, describe_params, select_parameters
from analysis.measure.restore import Batch, LossFn, measurement_mode, progress

_HessianOperator = HessianOperator  # the name the speed benchmark and older tests use

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "hvps_per_measurement",
    "HessianEigen",
    "HessianTrace",
    "SpectralDensity",
    "ParamSpec",
    "select_parameters",
    "top_eigenvalues",
    "trace",
    "density",
    "smooth_density",
    "hessian_summary",
]


@dataclass
class HessianEigen:
    """Top eigenpairs, largest first: Lanczos the largest eigenvalues, power iteration those of largest
    magnitude (the same at a trained minimum, where no negative eigenvalue is as large as λ_max)."""

    eigenvalues: list[float]
    eigenvectors: list[list[Tensor]]  # one list per eigenvalue, one tensor per selected parameter
    iterations: list[int]  # power iteration: products spent on each eigenvalue (Lanczos: empty)
    param_names: list[str]
    hvps: int = 0  # Hessian-vector products spent in all
    algorithm: str = DEFAULT_ALGORITHM


@dataclass
class HessianTrace:
    estimate: float
    stderr: float  # standard error of the Hutchinson mean
    n_samples: int


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature of the eigenvalue density.

    ``eigenvalues``/``weights`` are the quadrature nodes (Ritz values) and weights of all ``n_v``
    runs; weights sum to 1, so ``sum(w * f(x))`` estimates ``trace(f(H)) / dim``. ``grid`` and
    ``density`` are those nodes smoothed with Gaussians of width ``sigma`` (see ``smooth``).
    """

    eigenvalues: list[float]
    weights: list[float]
    n_iter: int  # Lanczos steps per run asked for, capped at dim (a run stops early if it spans H)
    n_v: int
    dim: int
    grid: np.ndarray = field(repr=False)
    density: np.ndarray = field(repr=False)
    sigma: float = 0.0

    def smooth(self, sigma: float | None = None, num_points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian-smoothed density on a grid covering the nodes; integrates to ~1.

        The default width is 1% of the node spread, so the curve does not depend on the loss scale.
        """
        nodes = np.asarray(self.eigenvalues, dtype=np.float64)
        lo, hi = float(nodes.min()), float(nodes.max())
        if sigma is None:
            sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
        return grid, smooth_density(nodes, self.weights, sigma, grid)


def smooth_density(nodes: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray, sigma: float,
                   grid: np.ndarray) -> np.ndarray:
    """Quadrature nodes/weights smoothed with Gaussians of width ``sigma``, evaluated on ``grid``.

    The report re-smooths stored densities of several runs with one ``sigma`` so their curves compare.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    z = (np.asarray(grid, dtype=np.float64)[:, None] - nodes[None, :]) / sigma
    return (np.exp(-0.5 * z**2) * weights[None, :]).sum(axis=1) / (sigma * math.sqrt(2 * math.pi))


def top_eigenvalues(
    model: nn.Module,
    batches: Sequence[Batch],
    k: int = 1,
    loss_fn: LossFn | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    bn_mode: str = "eval",
    params: ParamSpec = None,
    algorithm: str = DEFAULT_ALGORITHM,
    ncv: int | None = None,
) -> HessianEigen:
    """Top-``k`` Hessian eigenpairs by Lanczos (default) or power iteration with deflation.

    ``tol`` and ``max_iter`` mean what each algorithm makes of them (analysis.measure.eigen): Lanczos stops
    at residuals <= ``tol`` times the Ritz values, within ``max_iter`` restarts of ``ncv`` vectors; power
    iteration when the Rayleigh quotient changes by <= ``tol`` (relative), or after ``max_iter`` products.
    """
    check_algorithm(algorithm)
    with measurement_mode(model, bn_mode):
        op = HessianOperator(model, batches, loss_fn, params)
        sol = solve(op, k, algorithm=algorithm, max_iter=max_iter, tol=tol, seed=seed, ncv=ncv)
    return HessianEigen(sol.values, [op.split(v) for v in sol.vectors], sol.iterations, op.names, sol.hvps,
                        sol.algorithm)


def _hutchinson(op: HessianOperator, n_samples: int, seed: int) -> HessianTrace:
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples} must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in progress(range(n_samples), desc="hessian trace", total=n_samples):
        z = op.random(gen, "rademacher")
        samples.append(float(z @ op(z)))
    arr = np.asarray(samples, dtype=np.float64)
    stderr = float(arr.std(ddof=1) / math.sqrt(n_samples)) if n_samples > 1 else float("nan")
    return HessianTrace(float(arr.mean()), stderr, n_samples)


def trace(
    model: nn.Module,
    batches: Sequence[Batch],
    loss_fn: LossFn | None = None,
    n_samples: int = 100,
    seed: int = 0,
    bn_mode: str = "eval",
    params: ParamSpec = None,
) -> HessianTrace:
    """Hutchinson estimate of tr(H): the mean of z^T H z over Rademacher vectors z."""
    with measurement_mode(model, bn_mode):
        op = HessianOperator(model, batches, loss_fn, params)
        return _hutchinson(op, n_samples, seed)


def _lanczos(op: HessianOperator, v0: Tensor, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes and weights from ``n_iter`` Lanczos steps with full reorthogonalisation.

    Keeps all Lanczos vectors (n_iter x dim floats on the model's device): without them float32
    Lanczos loses orthogonality and produces spurious copies of the extreme eigenvalues.
    """
    basis = torch.empty(n_iter, op.dim, dtype=torch.float32, device=op.device)
    alphas: list[float] = []
    betas: list[float] = []
    v = v0 / v0.norm()
    for j in range(n_iter):
        basis[j] = v
        w = op(v)
        alpha = float(w @ v)
        alphas.append(alpha)
        if j == n_iter - 1:
            break
        done = basis[: j + 1]
        for _ in range(2):
            w = w - done.T @ (done @ w)
        beta = float(w.norm())
        scale = max(abs(a) for a in alphas) + (max(betas) if betas else 0.0)
        if beta <= 1e-6 * max(scale, 1e-30):  # invariant subspace found: the quadrature is exact
            break
        betas.append(beta)
        v = w / beta
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(t)
    return nodes.numpy(), (vecs[0, :] ** 2).numpy()


def density(
    model: nn.Module,
    batches: Sequence[Batch],
    n_iter: int = 100,
    n_v: int = 1,
    seed: int = 0,
    bn_mode: str = "eval",
    params: ParamSpec = None,
    loss_fn: LossFn | None = None,
) -> SpectralDensity:
    """Eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    ``n_v`` Rademacher start vectors, ``n_iter`` Lanczos steps each (capped at the dimension).
    """
    if n_iter < 1 or n_v < 1:
        raise ValueError(f"n_iter={n_iter} and n_v={n_v} must both be >= 1")
    with measurement_mode(model, bn_mode):
        op = HessianOperator(model, batches, loss_fn, params)
        gen = torch.Generator().manual_seed(seed)
        steps = min(n_iter, op.dim)
        all_nodes, all_weights = [], []
        for _ in progress(range(n_v), desc="hessian density", total=n_v):
            nodes, weights = _lanczos(op, op.random(gen, "rademacher"), steps)
            all_nodes.append(nodes)
            all_weights.append(weights / weights.sum() / n_v)
    nodes = np.concatenate(all_nodes)
    weights = np.concatenate(all_weights)
    result = SpectralDensity(
        eigenvalues=nodes.tolist(),
        weights=weights.tolist(),
        n_iter=steps,
        n_v=n_v,
        dim=op.dim,
        grid=np.empty(0),
        density=np.empty(0),
    )
    spread = float(nodes.max() - nodes.min())
    result.sigma = 0.01 * spread if spread > 0 else 1e-3 * max(abs(float(nodes.max())), 1.0)
    result.grid, result.density = result.smooth(result.sigma)
    return result


def hessian_summary(
    model: nn.Module,
    batches: Sequence[Batch],
    k: int = 3,
    trace_samples: int = 100,
    seed: int = 0,
    bn_mode: str = "eval",
    params: ParamSpec = None,
    loss_fn: LossFn | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    algorithm: str = DEFAULT_ALGORITHM,
) -> dict:
    """Top-k eigenvalues and Hutchinson trace (none for ``trace_samples=0``) as a JSON-ready dict (the
    content of hessian.json), with the algorithm and the Hessian-vector products each part spent."""
    check_algorithm(algorithm)
    with measurement_mode(model, bn_mode):
        op = HessianOperator(model, batches, loss_fn, params)
        sol = solve(op, k, algorithm=algorithm, max_iter=max_iter, tol=tol, seed=seed)
        tr = _hutchinson(op, trace_samples, seed) if trace_samples > 0 else None
    stderr = tr.stderr if tr is not None and math.isfinite(tr.stderr) else None  # NaN is not JSON
    return {
        "lambda_max": sol.values[0],
        "top_eigenvalues": sol.values,
        "algorithm": sol.algorithm,
        "eigen_hvps": sol.hvps,
        "eigen_iterations": sol.iterations,
        "trace": tr.estimate if tr is not None else None,
        "trace_stderr": stderr,
        "n_samples": tr.n_samples if tr is not None else 0,
        "hvps": op.products,
        "bn_mode": bn_mode,
        "seed": seed,
        "params": describe_params(params),
        "param_names": op.names,
        "num_params": op.dim,
        "num_batches": len(op.batches),
        "num_examples": op.num_examples,
        "max_iter": max_iter,
        "tol": tol,
    }
