"""Hessian of the training loss over given batches: top eigenvalues, trace and spectral density.

All three are matrix-free: they only need Hessian-vector products (HVPs), computed exactly by double
backprop. The loss is the average over all given batches weighted by batch size, i.e. the mean loss
over the union of their examples (with ``bn_mode="train"`` each batch is normalised by its own
statistics).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from analysis.measure.restore import (
    Batch,
    LossFn,
    batch_size,
    check_batches,
    default_loss,
    measurement_mode,
    model_device,
    progress,
)

ParamSpec = str | Sequence[str] | Callable[[str], bool] | None

__all__ = [
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
    """Dominant eigenpairs, largest magnitude first (at a trained minimum: the largest positive)."""

    eigenvalues: list[float]
    eigenvectors: list[list[Tensor]]  # one list per eigenvalue, one tensor per selected parameter
    iterations: list[int]  # power iterations spent on each eigenvalue
    param_names: list[str]


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


def select_parameters(model: nn.Module, params: ParamSpec = None) -> list[str]:
    """Names of the parameters a ``params`` spec selects, in the model's order (see module doc)."""
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
    elif isinstance(params, str):
        names = [n for n in named if n.startswith(params)]
    elif callable(params):
        names = [n for n in named if params(n)]
    else:
        wanted = set(params)
        unknown = sorted(wanted - named.keys())
        if unknown:
            raise ValueError(f"params: unknown parameter names {unknown}; the model has {list(named)}")
        names = [n for n in named if n in wanted]
    if not names:
        raise ValueError(f"params={params!r} selects no parameter; the model has {list(named)}")
    return names


def _describe(params: ParamSpec) -> str | list[str] | None:
    if params is None or isinstance(params, str):
        return params
    if callable(params):
        return getattr(params, "__name__", repr(params))
    return list(params)


class _HessianOperator:
    """v -> H v for the flattened selected parameters, on float32 copies of the weights.

    With ``reuse_graph`` (the default) each batch's forward pass and first backward (the gradient,
    built with ``create_graph``) run once, on the first product; every product after that is one
    more backward through the kept graphs, as PyHessian does for a single batch. This is most of
    the speed: recomputing them cost ~1.6x per product on a small CNN (tests/benchmarks). Keeping the
    graphs holds the activations of every batch; if that runs out of device memory the operator
    drops them and recomputes per product instead.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn | None, params: ParamSpec,
                 reuse_graph: bool = True):
        check_batches(batches)
        self.model = model
        self.loss_fn = loss_fn or default_loss
        self.device = model_device(model)
        self.names = select_parameters(model, params)
        selected = set(self.names)
        named = dict(model.named_parameters())
        self.selected = {n: named[n].detach().to(torch.float32) for n in self.names}
        self.fixed = {n: p.detach().to(torch.float32) for n, p in named.items() if n not in selected}
        # Clones, so that BatchNorm in train mode updates these and never the model's running stats.
        self.buffers = {
            n: b.detach().clone().to(torch.float32) if b.is_floating_point() else b.detach().clone()
            for n, b in model.named_buffers()
        }
        self.shapes = [self.selected[n].shape for n in self.names]
        self.numels = [self.selected[n].numel() for n in self.names]
        self.dim = sum(self.numels)
        self.batches = list(batches)
        sizes = [batch_size(b) for b in self.batches]
        self.num_examples = sum(sizes)
        self.weights = [s / self.num_examples for s in sizes]
        self.reuse_graph = reuse_graph
        self._graphs: list[tuple[list[Tensor], list[Tensor], list[int]]] | None = None
        self.first_order_passes = 0  # forward + gradient passes run so far (tests count them)

    def _to_device(self, t: Tensor) -> Tensor:
        t = t.to(self.device, non_blocking=True)
        return t.to(torch.float32) if t.is_floating_point() else t

    def split(self, flat: Tensor) -> list[Tensor]:
        return [c.view(s) for c, s in zip(torch.split(flat, self.numels), self.shapes, strict=True)]

    def _gradient(self, batch: Batch, weight: float) -> tuple[list[Tensor], list[Tensor], list[int]]:
        """Leaves, the differentiable gradient blocks (built with create_graph) and their indices."""
        inputs, targets = batch
        leaves = [t.detach().requires_grad_(True) for t in self.selected.values()]
        outputs = functional_call(
            self.model, {**self.fixed, **self.buffers, **dict(zip(self.names, leaves, strict=True))},
            (self._to_device(inputs),),
        )
        loss = self.loss_fn(outputs, self._to_device(targets)) * weight
        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        self.first_order_passes += 1
        # A gradient that does not depend on the weights (or is absent) contributes a zero block.
        keep = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return leaves, [grads[i] for i in keep], keep

    def _product(self, vs: list[Tensor], reuse: bool) -> Tensor:
        if reuse and self._graphs is None:
            self._graphs = [self._gradient(b, w) for b, w in zip(self.batches, self.weights, strict=True)]
        out = torch.zeros(self.dim, dtype=torch.float32, device=self.device)
        for i, (batch, w) in enumerate(zip(self.batches, self.weights, strict=True)):
            leaves, grads, keep = self._graphs[i] if reuse else self._gradient(batch, w)
            if not keep:
                continue
            hv = torch.autograd.grad(grads, leaves, grad_outputs=[vs[j] for j in keep], retain_graph=reuse,
                                     allow_unused=True)
            out += torch.cat([(h if h is not None else torch.zeros_like(t)).reshape(-1)
                              for h, t in zip(hv, leaves, strict=True)])
        return out

    def __call__(self, v: Tensor) -> Tensor:
        vs = self.split(v)
        if self.reuse_graph:
            try:
                return self._product(vs, reuse=True)
            except torch.OutOfMemoryError:
                self._graphs, self.reuse_graph = None, False  # free the kept graphs, recompute from now on
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return self._product(vs, reuse=False)

    def random(self, gen: torch.Generator, kind: str) -> Tensor:
        """A random vector from the local CPU generator (same draw on any device), moved over."""
        if kind == "rademacher":
            v = torch.randint(0, 2, (self.dim,), generator=gen, dtype=torch.float32) * 2 - 1
        else:
            v = torch.randn(self.dim, generator=gen, dtype=torch.float32)
        return v.to(self.device)


def _orthogonalise(v: Tensor, basis: list[Tensor]) -> Tensor:
    # Two passes of Gram-Schmidt: one leaves float32 round-off of the size of the removed part.
    for _ in range(2):
        for u in basis:
            v = v - (u @ v) * u
    return v


def _power_iteration(
    op: _HessianOperator, k: int, max_iter: int, tol: float, seed: int
) -> tuple[list[float], list[Tensor], list[int]]:
    if not 1 <= k <= op.dim:
        raise ValueError(f"k={k} must be between 1 and the number of selected weights ({op.dim})")
    gen = torch.Generator().manual_seed(seed)
    values: list[float] = []
    vectors: list[Tensor] = []
    iterations: list[int] = []
    for _ in progress(range(k), desc="hessian eigen", total=k):
        v = _orthogonalise(op.random(gen, "gaussian"), vectors)
        v = v / v.norm()
        value, steps = 0.0, 0
        for steps in range(1, max_iter + 1):
            # Deflation: work in the complement of the eigenvectors already found.
            hv = _orthogonalise(op(v), vectors)
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
    return values, vectors, iterations


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
) -> HessianEigen:
    """Top-``k`` Hessian eigenpairs by power iteration with deflation.

    Power iteration finds the eigenvalue of largest magnitude; each next one is found in the
    orthogonal complement of those before. An eigenvalue stops when its Rayleigh quotient changes by
    at most ``tol`` (relative) between iterations, or after ``max_iter`` HVPs.
    """
    with measurement_mode(model, bn_mode):
        op = _HessianOperator(model, batches, loss_fn, params)
        values, vectors, iterations = _power_iteration(op, k, max_iter, tol, seed)
    return HessianEigen(values, [op.split(v) for v in vectors], iterations, op.names)


def _hutchinson(op: _HessianOperator, n_samples: int, seed: int) -> HessianTrace:
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
        op = _HessianOperator(model, batches, loss_fn, params)
        return _hutchinson(op, n_samples, seed)


def _lanczos(op: _HessianOperator, v0: Tensor, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
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
        op = _HessianOperator(model, batches, loss_fn, params)
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
) -> dict:
    """Top-k eigenvalues and Hutchinson trace as a JSON-ready dict (the content of hessian.json)."""
    with measurement_mode(model, bn_mode):
        op = _HessianOperator(model, batches, loss_fn, params)
        values, _, iterations = _power_iteration(op, k, max_iter, tol, seed)
        tr = _hutchinson(op, trace_samples, seed)
    return {
        "lambda_max": values[0],
        "top_eigenvalues": values,
        "eigen_iterations": iterations,
        "trace": tr.estimate,
        "trace_stderr": tr.stderr if math.isfinite(tr.stderr) else None,  # NaN is not JSON
        "n_samples": tr.n_samples,
        "bn_mode": bn_mode,
        "seed": seed,
        "params": _describe(params),
        "param_names": op.names,
        "num_params": op.dim,
        "num_batches": len(op.batches),
        "num_examples": op.num_examples,
        "max_iter": max_iter,
        "tol": tol,
    }
