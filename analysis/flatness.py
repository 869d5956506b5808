"""Flatness of a run's model: Hessian spectrum and loss landscapes, written into its run directory.

Every run of a dataset is measured on the same fixed training samples (the first ones of a
seed-0, un-augmented pass), so λ_max and traces compare across methods and seeds.
Files: hessian.json (end of training), hessian_epochs.csv (chosen epochs), hessian_density.npz
(stochastic-Lanczos eigenvalue density), landscape_1d.npz, landscape_2d.npz, landscape_line_<other run>.npz.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench import rundir
from bench.checkpoint import read_model
from bench.config import RunConfig
from bench.data import create_data
from bench.errors import UsageError
from bench.models import create_model
from bench.plugins import EpochView, RunHook
from bench.provenance import provenance
from bench.records import (
    CHECKPOINT,
    CONFIG,
    HESSIAN_DENSITY,
    LANDSCAPE_1D,
    LANDSCAPE_2D,
    HessianRecord,
    landscape_line,
)
from bench.rundir import read_config, read_summary

from .measure.hessian import DEFAULT_ALGORITHM, density, hessian_summary, hvps_per_measurement
from .measure.landscape import loss_curve_1d, loss_line, loss_surface_2d, save_landscape


def fixed_data(config: RunConfig, device: torch.device, samples: int, batch_size: int = 250,
               label_noise: float | None = None) -> Any:
    """A seed-0, un-augmented view of the run's training set (with the labels it trained on, unless
    `label_noise` says otherwise): the same samples for every run."""
    return create_data(config.dataset, root=config.data_root, batch_size=min(batch_size, samples), device=device,
                       seed=0, train_subset=config.train_subset, download=False, num_workers=0, augment=False,
                       label_noise=config.label_noise if label_noise is None else label_noise,
                       label_noise_seed=config.label_noise_draw(),
                       val_size=config.val_size, val_split_seed=config.val_split_seed)


def first_batches(data: Any, samples: int) -> list[tuple[Tensor, Tensor]]:
    """The first `samples` samples of the seed-0 pass, exactly (the last batch cut to size), or all there are."""
    batches, seen = [], 0
    for _, inputs, targets in data.train_batches(0):
        take = min(samples - seen, targets.shape[0])
        batches.append((inputs[:take], targets[:take]))
        seen += take
        if seen >= samples:
            break
    return batches


def label_views(config: RunConfig, device: torch.device, batches: list[tuple[Tensor, Tensor]],
                samples: int) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """Under label noise, the measurement images seen two more ways: `true_labels` (the same images with
    their clean labels) and `flipped` (only the images whose label the noise changed, with the labels the
    run trained on). The clean labels come from the data layer itself, loaded without noise: the images and
    their order do not depend on the labels. Empty without label noise."""
    if config.label_noise <= 0:
        return {}
    clean = first_batches(fixed_data(config, device, samples, label_noise=0.0), samples)
    inputs, noisy = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    if not torch.equal(torch.cat([x for x, _ in clean]), inputs):
        raise RuntimeError("the clean-label view of the measurement images holds other images")
    true = torch.cat([y for _, y in clean])
    flipped = (noisy != true).nonzero().squeeze(1)
    size = max(x.shape[0] for x, _ in batches)
    return {"true_labels": [(x, true[i:i + x.shape[0]]) for i, (x, _) in
                            zip(_offsets(batches), batches, strict=True)],
            "flipped": [(inputs[flipped[i:i + size]], noisy[flipped[i:i + size]])
                        for i in range(0, len(flipped), size)]}


def _offsets(batches: list[tuple[Tensor, Tensor]]) -> list[int]:
    starts, at = [], 0
    for _, y in batches:
        starts.append(at)
        at += y.shape[0]
    return starts


def fixed_batches(config: RunConfig, device: torch.device, samples: int) -> list[tuple[Tensor, Tensor]]:
    return first_batches(fixed_data(config, device, samples), samples)


def load_run(run_dir: str | Path, device: torch.device, samples: int) -> tuple[RunConfig, nn.Module, list]:
    """The run's config, its last checkpointed model (eval mode, with `model.checkpoint_epoch`: the epochs
    it has trained) and the fixed measurement batches."""
    run_dir = Path(run_dir)
    for name in (CONFIG, CHECKPOINT):
        if not (run_dir / name).is_file():
            raise UsageError(f"{run_dir} is not a run directory with a checkpoint: {run_dir / name} is missing")
    values = read_config(run_dir, strict=True)
    weights, epoch = read_model(run_dir, device)
    config = RunConfig.from_record(values)
    data = fixed_data(config, device, samples)
    model = create_model(config.model, num_classes=data.num_classes, in_chans=data.in_chans,
                         img_size=data.img_size).to(device)
    model.load_state_dict(weights)
    model.checkpoint_epoch = epoch  # type: ignore[assignment]
    return config, model.eval(), first_batches(data, samples)


def check_finished(run_dir: str | Path, allow_unfinished: bool) -> None:
    """UsageError for a run that has not finished, unless allowed: its flatness would describe a model that
    resuming trains on (the files record their epoch, and the report attaches them only to that epoch)."""
    summary = read_summary(Path(run_dir))
    status = summary.get("status") if summary else "unfinished (no summary.json)"
    if status in ("finished", "diverged") or allow_unfinished:
        return
    raise UsageError(f"{run_dir} is {status}: its flatness would be that of an intermediate model; finish it "
                     "with `safbench run --resume` first, or pass --allow-unfinished to measure it as it is")


def measure_hessian(model: nn.Module, batches: list, *, k: int = 3, trace_samples: int = 50,
                    seed: int = 0, bn_mode: str = "eval", max_iter: int = 100, algorithm: str = DEFAULT_ALGORITHM,
                    views: dict[str, list] | None = None) -> dict[str, Any]:
    """hessian_summary on `batches`, plus λ_max alone on each of `views` (label_views): lambda_max_<view>
    and num_examples_<view> (None and 0 for an empty view); `hvps` counts every product."""
    start = time.perf_counter()
    summary = hessian_summary(model, batches, k=k, trace_samples=trace_samples, seed=seed, bn_mode=bn_mode,
                              max_iter=max_iter, algorithm=algorithm)
    for name, view in (views or {}).items():
        part = hessian_summary(model, view, k=1, trace_samples=0, seed=seed, bn_mode=bn_mode, max_iter=max_iter,
                               algorithm=algorithm) if view else {"lambda_max": None, "num_examples": 0, "hvps": 0}
        summary.update({f"lambda_max_{name}": part["lambda_max"], f"num_examples_{name}": part["num_examples"]})
        summary["hvps"] += part["hvps"]
    summary["seconds"] = time.perf_counter() - start
    summary.pop("param_names", None)  # long and derivable from the model
    return summary


EPOCH_COLUMNS = ("lambda_max", "trace", "trace_stderr", "algorithm", "hvps", "num_examples", "seconds",
                 "lambda_max_true_labels", "lambda_max_flipped", "num_examples_flipped")


def write_hessian(run_dir: Path, summary: HessianRecord, epoch: int | None) -> None:
    """The final model's measurement (epoch None) as hessian.json, an epoch's as its row of hessian_epochs.csv
    (replacing a row of that epoch that a killed attempt wrote: one row per epoch, of the checkpointed model)."""
    if epoch is None:
        rundir.write_hessian(run_dir, summary)
        return
    rundir.write_hessian_epoch(run_dir, {  # type: ignore[typeddict-item]
        "epoch": epoch, **{c: summary.get(c) for c in EPOCH_COLUMNS if c in summary},
        **{f"eigenvalue_{i}": v for i, v in enumerate(summary["top_eigenvalues"])}})


FINAL_K, FINAL_TRACE_SAMPLES = 3, 50  # the run hook's final measurement; its course is top-1 without a trace


def run_hook_hvps(config: RunConfig) -> int:
    """Hessian-vector products the run hook of this config spends (typical counts, for cost estimates): one
    top-1 per chosen epoch and per label view, and the final top-3 with its trace."""
    views = 3 if config.label_noise > 0 else 1  # as trained, true labels, flipped images alone
    top1 = hvps_per_measurement(1, 0)
    course = len(config.hessian_epochs) * views * top1
    final = hvps_per_measurement(FINAL_K, FINAL_TRACE_SAMPLES) + (views - 1) * top1 if config.hessian else 0
    return course + final


def hessian_hook(config: RunConfig) -> RunHook | None:
    """The run hook (entry point `safbench.run_hooks`) of `--hessian` / `--hessian-epochs`: λ_max (top-1, no
    trace: the course is what the cost buys) after the chosen epochs (hessian_epochs.csv), and top-3 with the
    trace of the final model (hessian.json); under label noise also λ_max with the true labels and on the
    flipped images alone (label_views)."""
    if not config.hessian and not config.hessian_epochs:
        return None

    def measure(view: EpochView) -> None:
        wanted = config.hessian if view.epoch is None else view.epoch in config.hessian_epochs
        if not wanted:
            return
        batches = fixed_batches(config, view.device, config.hessian_samples)
        views = label_views(config, view.device, batches, config.hessian_samples)
        final = view.epoch is None
        summary = measure_hessian(view.model, batches, k=FINAL_K if final else 1,
                                  trace_samples=FINAL_TRACE_SAMPLES if final else 0, views=views)
        summary.update(epoch=config.epochs if final else view.epoch + 1, samples=config.hessian_samples)
        write_hessian(view.run_dir, summary, view.epoch)

    return measure


# bench cannot import analysis: a cost estimate in bench reaches the count through the hook's entry point,
# plugins.loaded(RUN_HOOKS)["hessian"].hvps(config).
hessian_hook.hvps = run_hook_hvps  # type: ignore[attr-defined]


def hessian_for_run_dir(run_dir: str | Path, *, samples: int = 1000, k: int = 3, trace_samples: int = 50,
                        bn_mode: str = "eval", device: str = "auto", command: str | None = None,
                        allow_unfinished: bool = False, algorithm: str = DEFAULT_ALGORITHM) -> dict[str, Any]:
    """Measure the run's final model and write hessian.json, with the provenance of this measurement and
    the epoch of the checkpoint it measured (under label noise with the label_views too)."""
    dev = _device(device)
    check_finished(run_dir, allow_unfinished)
    config, model, batches = load_run(run_dir, dev, samples)
    summary = measure_hessian(model, batches, k=k, trace_samples=trace_samples, bn_mode=bn_mode,
                              algorithm=algorithm, views=label_views(config, dev, batches, samples))
    summary.update(epoch=model.checkpoint_epoch, samples=samples, **provenance(dev, command))
    write_hessian(Path(run_dir), summary, None)
    return summary


def density_summary(nodes: Any, weights: Any) -> dict[str, float]:
    """What the report quotes from a density: its extreme Ritz values and the weight below zero.

    The extreme Ritz values of Lanczos converge first, so they estimate λ_max and the most negative
    eigenvalue (reported as 0 mass / the smallest node when none is negative).
    """
    import numpy as np

    nodes, weights = np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float)
    return {"largest": float(nodes.max()), "smallest": float(nodes.min()),
            "negative_mass": float(weights[nodes < 0].sum())}


def density_for_run_dir(run_dir: str | Path, *, samples: int = 1000, n_iter: int = 100, n_v: int = 1,
                        seed: int = 0, bn_mode: str = "eval", device: str = "auto",
                        command: str | None = None) -> Path:
    """Stochastic Lanczos quadrature of the final model's Hessian spectrum, saved as hessian_density.npz.

    Arrays: ``nodes`` and ``weights`` (the quadrature, weights summing to 1) and the Gaussian-smoothed
    ``grid``/``density``; the meta holds the settings, the extremes, the time and the provenance.
    """
    dev = _device(device)
    run_dir = Path(run_dir)
    config, model, batches = load_run(run_dir, dev, samples)
    start = time.perf_counter()
    d = density(model, batches, n_iter=n_iter, n_v=n_v, seed=seed, bn_mode=bn_mode)
    meta = {"kind": "hessian_density", "run_dir": run_dir.name, "method": config.method,
            "dataset": config.dataset, "model": config.model, "samples": samples, "n_iter": d.n_iter,
            "n_v": d.n_v, "dim": d.dim, "sigma": d.sigma, "seed": seed, "bn_mode": bn_mode,
            "epoch": model.checkpoint_epoch, "seconds": time.perf_counter() - start,
            **density_summary(d.eigenvalues, d.weights), **provenance(dev, command)}
    path = run_dir / HESSIAN_DENSITY
    save_landscape(path, {"nodes": d.eigenvalues, "weights": d.weights, "grid": d.grid, "density": d.density},
                   meta)  # the landscape files' format: arrays plus a JSON meta, written atomically
    return path


def landscape_for_run_dir(run_dir: str | Path, *, dim: int = 1, samples: int = 1000, resolution: int | None = None,
                          span: float = 1.0, seed: int = 0, line_to: str | Path | None = None,
                          recalibrate_bn: bool = False, device: str = "auto", command: str | None = None,
                          allow_unfinished: bool = False) -> Path:
    """Compute one landscape of the run's final model and save it as npz in the run directory (its meta
    records the epoch of the checkpoint measured)."""
    dev = _device(device)
    run_dir = Path(run_dir)
    check_finished(run_dir, allow_unfinished)
    config, model, batches = load_run(run_dir, dev, samples)
    recal = batches if recalibrate_bn else None
    meta = {"run_dir": run_dir.name, "epoch": model.checkpoint_epoch, "samples": samples, "seed": seed, "span": span,
            "recalibrate_bn": recalibrate_bn, "method": config.method, "dataset": config.dataset,
            "model": config.model, **provenance(dev, command)}
    if line_to is not None:
        other_config, other, _ = load_run(line_to, dev, 1)
        if (other_config.model, other_config.dataset) != (config.model, config.dataset):
            raise UsageError(f"{line_to} trains {other_config.model} on {other_config.dataset}; "
                             f"a line needs the same model and dataset as {run_dir}")
        n = resolution or 31
        result = loss_line(model, model.state_dict(), other.state_dict(), batches,
                           alphas=torch.linspace(-0.25, 1.25, n).tolist(), recalibrate_bn=recal)
        meta.update(kind="line", to_run_dir=Path(line_to).name, to_method=other_config.method)
        path = landscape_line(run_dir, line_to)
    elif dim == 1:
        n = resolution or 51
        result = loss_curve_1d(model, batches, alphas=torch.linspace(-span, span, n).tolist(), seed=seed,
                               recalibrate_bn=recal)
        meta.update(kind="1d")
        path = run_dir / LANDSCAPE_1D
    elif dim == 2:
        n = resolution or 21
        grid = torch.linspace(-span, span, n).tolist()
        result = loss_surface_2d(model, batches, xs=grid, ys=grid, seed=seed, recalibrate_bn=recal)
        meta.update(kind="2d")
        path = run_dir / LANDSCAPE_2D
    else:
        raise UsageError(f"dim={dim} is invalid: allowed values are 1, 2")
    save_landscape(path, result, meta)
    return path


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda' is invalid here: no CUDA device is visible; allowed: cpu, auto")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"device={name!r} is invalid: allowed values are auto, cpu, cuda")
    return torch.device(name)


