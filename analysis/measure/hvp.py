"""The Hessian-vector product of the training loss over given batches, as an operator on flat vectors.

Exact products by double backprop on detached float32 copies of the weights (``torch.func.functional_call``),
so nothing of the model itself is differentiated or updated; a parameter subset (``params``, see
``analysis.measure.hessian``) restricts the operator to that block of the Hessian. The operator counts its
products (``products``): the cost every eigen- and trace-solver reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from analysis.measure.restore import Batch, LossFn, batch_size, check_batches, default_loss, model_device

ParamSpec = str | Sequence[str] | Callable[[str], bool] | None


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


def describe_params(params: ParamSpec) -> str | list[str] | None:
    if params is None or isinstance(params, str):
        return params
    if callable(params):
        return getattr(params, "__name__", repr(params))
    return list(params)


class HessianOperator:
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
        self.products = 0  # Hessian-vector products computed so far: the cost solvers report

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
        self.products += 1
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
