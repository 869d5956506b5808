"""Loss landscapes (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

Loss and accuracy are measured at ``theta + alpha * d`` (1D), ``theta + x * d1 + y * d2`` (2D) or
``(1 - alpha) * theta_a + alpha * theta_b`` (the line between two checkpoints). Random directions
are filter-normalised by default, so that scale-invariant networks give comparable plots.

Every sweep hands the model back exactly as found: weights and buffers are restored by copying saved
originals (never by subtracting the step back), and so are each module's training flag, the
BatchNorm momenta and the global RNG. Dropout and other stochastic layers are off during a sweep;
BatchNorm follows ``bn_mode``.

``recalibrate_bn``: a list of batches; at every point BatchNorm running statistics are reset and
re-estimated on them (cumulative average, train mode) before measuring with ``bn_mode="eval"``.
The stored statistics belong to the original weights and can be badly off elsewhere; recalibration
is pointless with ``bn_mode="train"``, which never reads them.

Results are dicts of numpy arrays: 1D ``{alphas, loss, accuracy}``, 2D ``{xs, ys, loss, accuracy}``
with ``loss[j, i]`` at ``(xs[i], ys[j])``. Accuracy is NaN when outputs are not class logits.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from analysis.measure.restore import (
    Batch,
    LossFn,
    batch_size,
    batchnorm_modules,
    check_batches,
    default_loss,
    measurement_mode,
    progress,
)

Direction = Sequence[Tensor] | Mapping[str, Tensor]
Result = dict[str, np.ndarray]

__all__ = [
    "random_direction",
    "interpolation_direction",
    "loss_curve_1d",
    "loss_line",
    "loss_surface_2d",
    "save_landscape",
    "load_landscape",
    "plot_1d",
    "plot_2d",
]

_META_KEY = "__meta__"


def random_direction(
    model: nn.Module, seed: int = 0, filter_normalize: bool = True, ignore_bn_and_bias: bool = True
) -> list[Tensor]:
    """A Gaussian direction, one tensor per ``model.parameters()`` entry, from a local generator.

    ``filter_normalize``: each filter (slice along dim 0: a conv output channel, a linear output row)
    is rescaled to the norm of the same filter of the weight. 1-D parameters (biases, BatchNorm and
    LayerNorm affine) get a zero direction when ``ignore_bn_and_bias``; otherwise they are rescaled as
    a whole to the parameter's norm. Without ``filter_normalize`` the raw Gaussian is returned (the
    unnormalised baseline of Li et al.), still zero on 1-D parameters when ``ignore_bn_and_bias``.
    """
    gen = torch.Generator().manual_seed(seed)
    directions = []
    for p in model.parameters():
        # Drawn for every parameter, so the options never shift the draws of the others.
        d = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        w = p.detach().to("cpu", torch.float32)
        if p.dim() <= 1:
            if ignore_bn_and_bias:
                d.zero_()
            elif filter_normalize:
                d.mul_(w.norm() / (d.norm() + 1e-10))
        elif filter_normalize:
            w_norm = w.reshape(w.shape[0], -1).norm(dim=1)
            d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
            d.mul_((w_norm / (d_norm + 1e-10)).view(-1, *([1] * (d.dim() - 1))))
        directions.append(d.to(p.device, p.dtype))
    return directions


def interpolation_direction(
    model_a_state: Mapping[str, Tensor], model_b_state: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``b - a`` for every floating-point entry of two state dicts (weights and BN statistics).

    ``a + alpha * (b - a)`` is the straight line between the checkpoints; it can be passed as the
    ``direction`` of ``loss_curve_1d`` on a model holding ``a`` (``loss_line`` does this exactly).
    """
    if model_a_state.keys() != model_b_state.keys():
        diff = sorted(model_a_state.keys() ^ model_b_state.keys())
        raise ValueError(f"the two states have different entries: {diff}")
    return {
        k: model_b_state[k].detach() - model_a_state[k].detach()
        for k in model_a_state
        if model_a_state[k].is_floating_point()
    }


class _Probe:
    """Sets the model to points of a sweep and measures it; restores everything on close."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        loss_fn: LossFn | None,
        bn_mode: str,
        recalibrate_bn: Sequence[Batch] | None,
    ):
        check_batches(batches)
        self.model = model
        self.batches = list(batches)
        self.loss_fn = loss_fn or default_loss
        self.bn_mode = bn_mode
        self.recalibrate = list(recalibrate_bn) if recalibrate_bn is not None else None
        # Live tensors by name; the originals are copies that are copied back at the end.
        self.live: dict[str, Tensor] = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        self.originals = {k: v.detach().clone() for k, v in self.live.items()}
        first = next(iter(model.parameters()))
        self.device, self.dtype = first.device, first.dtype

    @contextlib.contextmanager
    def session(self) -> Iterator[_Probe]:
        bns = batchnorm_modules(self.model)
        momenta = [m.momentum for m in bns]
        try:
            with measurement_mode(self.model, self.bn_mode), torch.no_grad():
                yield self
        finally:
            with torch.no_grad():
                for k, v in self.live.items():
                    v.copy_(self.originals[k])
            for m, momentum in zip(bns, momenta, strict=True):
                m.momentum = momentum

    def set(self, values: Mapping[str, Tensor]) -> None:
        for k, v in values.items():
            self.live[k].copy_(v)

    def _prepare(self, t: Tensor) -> Tensor:
        t = t.to(self.device, non_blocking=True)
        return t.to(self.dtype) if t.is_floating_point() else t

    def _recalibrate(self) -> None:
        bns = batchnorm_modules(self.model)
        if not bns or self.recalibrate is None:
            return
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: every recalibration batch counts equally
            m.train()
        for inputs, _ in self.recalibrate:
            self.model(self._prepare(inputs))
        for m in bns:
            m.train(self.bn_mode == "train")

    def measure(self) -> tuple[float, float]:
        """Mean loss and accuracy over all batches, weighted by batch size."""
        self._recalibrate()
        total_loss, correct, count, classify = 0.0, 0, 0, True
        for batch in self.batches:
            inputs, targets = self._prepare(batch[0]), self._prepare(batch[1])
            outputs = self.model(inputs)
            n = batch_size(batch)
            total_loss += float(self.loss_fn(outputs, targets)) * n
            count += n
            classify = classify and _is_classification(outputs, targets)
            if classify:
                correct += int((outputs.argmax(dim=1) == targets).sum())
        return total_loss / count, (correct / count if classify else float("nan"))


def _is_classification(outputs: Tensor, targets: Tensor) -> bool:
    return (
        outputs.dim() == 2
        and targets.dim() == 1
        and not targets.is_floating_point()
        and outputs.shape[0] == targets.shape[0]
    )


def _as_named(model: nn.Module, direction: Direction, live: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A direction keyed by parameter/buffer name, on each tensor's device and dtype."""
    if isinstance(direction, Mapping):
        unknown = sorted(set(direction) - set(live))
        if unknown:
            raise ValueError(f"direction has entries the model lacks: {unknown}")
        named = dict(direction)
    else:
        names = [n for n, _ in model.named_parameters()]
        if len(direction) != len(names):
            raise ValueError(f"direction has {len(direction)} tensors; the model has {len(names)} parameters")
        named = dict(zip(names, direction, strict=True))
    for name, d in named.items():
        if d.shape != live[name].shape:
            raise ValueError(
                f"direction[{name!r}] has shape {tuple(d.shape)}, expected {tuple(live[name].shape)}"
            )
    # Copies, in case a direction shares storage with the weights that each point overwrites.
    return {n: d.detach().to(live[n].device, live[n].dtype, copy=True) for n, d in named.items()}


def _grid(values: Any, default: np.ndarray) -> np.ndarray:
    return default if values is None else np.asarray(values, dtype=np.float64).reshape(-1)


def loss_curve_1d(
    model: nn.Module,
    batches: Sequence[Batch],
    direction: Direction | None = None,
    *,
    alphas: Any = None,
    seed: int = 0,
    bn_mode: str = "eval",
    recalibrate_bn: Sequence[Batch] | None = None,
    loss_fn: LossFn | None = None,
) -> Result:
    """Loss and accuracy at ``theta + alpha * direction`` for each alpha (default linspace(-1, 1, 51)).

    ``direction``: one tensor per parameter (as ``random_direction`` returns, the default with
    ``seed``) or a dict by parameter/buffer name (as ``interpolation_direction`` returns).
    """
    alphas = _grid(alphas, np.linspace(-1.0, 1.0, 51))
    if direction is None:
        direction = random_direction(model, seed=seed)
    probe = _Probe(model, batches, loss_fn, bn_mode, recalibrate_bn)
    named = _as_named(model, direction, probe.live)
    loss, acc = np.empty(len(alphas)), np.empty(len(alphas))
    with probe.session():
        for i, a in enumerate(progress(alphas, desc="landscape 1d", total=len(alphas))):
            probe.set({n: probe.originals[n] + float(a) * d for n, d in named.items()})
            loss[i], acc[i] = probe.measure()
    return {"alphas": alphas, "loss": loss, "accuracy": acc}


def loss_line(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    batches: Sequence[Batch],
    alphas: Any = None,
    *,
    bn_mode: str = "eval",
    recalibrate_bn: Sequence[Batch] | None = None,
    loss_fn: LossFn | None = None,
) -> Result:
    """Loss and accuracy along ``(1 - alpha) * a + alpha * b`` (default alphas linspace(-0.25, 1.25, 31)).

    ``model`` only provides the architecture; its own weights are restored afterwards. Floating
    entries (weights and BN statistics) are interpolated; integer ones (BN batch counters) are a's.
    Written as (1 - alpha) a + alpha b rather than a + alpha (b - a) so alpha = 0 and 1 give the two
    checkpoints exactly.
    """
    alphas = _grid(alphas, np.linspace(-0.25, 1.25, 31))
    interpolation_direction(state_a, state_b)  # validates that the states match
    probe = _Probe(model, batches, loss_fn, bn_mode, recalibrate_bn)
    unknown = sorted(set(state_a) - set(probe.live))
    if unknown:
        raise ValueError(f"state has entries the model lacks: {unknown}")
    # Copies: ``model.state_dict()`` shares storage with the very tensors each point overwrites.
    a = {k: v.detach().to(probe.live[k].device, probe.live[k].dtype, copy=True) for k, v in state_a.items()}
    b = {k: v.detach().to(probe.live[k].device, probe.live[k].dtype, copy=True) for k, v in state_b.items()}
    loss, acc = np.empty(len(alphas)), np.empty(len(alphas))
    with probe.session():
        for i, t in enumerate(progress(alphas, desc="landscape line", total=len(alphas))):
            t = float(t)
            probe.set({k: (1 - t) * a[k] + t * b[k] if a[k].is_floating_point() else a[k] for k in a})
            loss[i], acc[i] = probe.measure()
    return {"alphas": alphas, "loss": loss, "accuracy": acc}


def loss_surface_2d(
    model: nn.Module,
    batches: Sequence[Batch],
    directions: tuple[Direction, Direction] | None = None,
    xs: Any = None,
    ys: Any = None,
    *,
    seed: int = 0,
    bn_mode: str = "eval",
    recalibrate_bn: Sequence[Batch] | None = None,
    loss_fn: LossFn | None = None,
) -> Result:
    """Loss and accuracy at ``theta + x * d1 + y * d2`` on the grid ``xs`` x ``ys``.

    Defaults: ``xs = ys = linspace(-1, 1, 21)``, directions filter-normalised from ``seed`` and
    ``seed + 1`` (nearly orthogonal in high dimension, as in Li et al.). ``loss`` has shape
    ``(len(ys), len(xs))`` so that it plots directly with ``contour(xs, ys, loss)``.
    """
    xs = _grid(xs, np.linspace(-1.0, 1.0, 21))
    ys = _grid(ys, np.linspace(-1.0, 1.0, 21))
    if directions is None:
        directions = (random_direction(model, seed=seed), random_direction(model, seed=seed + 1))
    probe = _Probe(model, batches, loss_fn, bn_mode, recalibrate_bn)
    d1, d2 = (_as_named(model, d, probe.live) for d in directions)
    names = d1.keys() | d2.keys()
    zero = {n: torch.zeros_like(probe.originals[n]) for n in names}
    d1, d2 = {**zero, **d1}, {**zero, **d2}
    loss, acc = np.empty((len(ys), len(xs))), np.empty((len(ys), len(xs)))
    points = [(j, i) for j in range(len(ys)) for i in range(len(xs))]
    with probe.session():
        for j, i in progress(points, desc="landscape 2d", total=len(points)):
            x, y = float(xs[i]), float(ys[j])
            probe.set({n: probe.originals[n] + x * d1[n] + y * d2[n] for n in names})
            loss[j, i], acc[j, i] = probe.measure()
    return {"xs": xs, "ys": ys, "loss": loss, "accuracy": acc}


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary file in the target's folder, renamed over the target only if the body succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_landscape(path: str | os.PathLike[str], result: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write a result's arrays and a JSON ``meta`` dict (directions, seed, batches...) to one .npz."""
    if _META_KEY in result:
        raise ValueError(f"result may not contain the reserved key {_META_KEY!r}")
    arrays = {k: np.asarray(v) for k, v in result.items()}
    with _atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays, **{_META_KEY: np.asarray(json.dumps(dict(meta), sort_keys=True))})
        f.flush()
        os.fsync(f.fileno())


def load_landscape(path: str | os.PathLike[str]) -> tuple[Result, dict[str, Any]]:
    """``(result, meta)`` as given to ``save_landscape``."""
    with np.load(path, allow_pickle=False) as data:
        result = {k: data[k] for k in data.files if k != _META_KEY}
        meta = json.loads(str(data[_META_KEY])) if _META_KEY in data.files else {}
    return result, meta


def _save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with _atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")


def plot_1d(
    results: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    log_loss: bool = False,
) -> None:
    """Loss (and accuracy, where measured) against alpha, one line per label, from stored arrays."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    has_acc = any(np.isfinite(np.asarray(r["accuracy"])).any() for r in results.values() if "accuracy" in r)
    fig = Figure(figsize=(9 if has_acc else 5, 4))
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    for label, r in results.items():
        axes[0].plot(r["alphas"], r["loss"], label=label)
        if has_acc and "accuracy" in r:
            axes[1].plot(r["alphas"], 100 * np.asarray(r["accuracy"]), label=label)
    axes[0].set(xlabel="alpha", ylabel="loss", yscale="log" if log_loss else "linear")
    if has_acc:
        axes[1].set(xlabel="alpha", ylabel="accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)


def plot_2d(
    result: Mapping[str, Any],
    path: str | os.PathLike[str],
    kind: str = "contour",
    *,
    levels: int = 30,
    vmax: float | None = None,
    title: str | None = None,
) -> None:
    """Contour map or 3D surface of a stored 2D loss; ``vmax`` clips the loss for display."""
    from matplotlib.figure import Figure

    if kind not in ("contour", "surface"):
        raise ValueError(f"kind={kind!r} is not allowed; use 'contour' or 'surface'")
    xs, ys = np.asarray(result["xs"]), np.asarray(result["ys"])
    loss = np.asarray(result["loss"], dtype=np.float64)
    if vmax is not None:
        loss = np.minimum(loss, vmax)
    grid_x, grid_y = np.meshgrid(xs, ys)  # (len(ys), len(xs)), like loss
    fig = Figure(figsize=(6, 5))
    if kind == "contour":
        ax = fig.add_subplot()
        filled = ax.contourf(grid_x, grid_y, loss, levels=levels, cmap="viridis")
        ax.contour(grid_x, grid_y, loss, levels=levels, colors="k", linewidths=0.3)
        fig.colorbar(filled, ax=ax, label="loss")
        ax.set(xlabel="x (direction 1)", ylabel="y (direction 2)", aspect="equal")
    else:
        ax = fig.add_subplot(projection="3d")
        ax.plot_surface(grid_x, grid_y, loss, cmap="viridis", linewidth=0, antialiased=True)
        ax.set(xlabel="x", ylabel="y", zlabel="loss")
    if title:
        ax.set_title(title)
    _save_figure(fig, path)
