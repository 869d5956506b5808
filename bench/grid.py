"""Grid files: load, validate and expand into cells, purely (no file is touched but the grid file).

A grid file has three top-level keys, all optional but `grid` is what makes it a grid:

    base:       {dataset: cifar10, model: resnet18, epochs: 200}   # run keys shared by every cell
    grid:       {method: [sgd, sam, saf], seed: [0, 1, 2]}        # axes; cells are their product
    per_method: {sam: {rho: 0.05}, saf: {lam: 0.3}}                # run keys for one method's cells

Run keys are `safbench run`'s flags with underscores (batch_size, train_subset, e_tilde, ...).
`grid` may also be a list of sub-grids (mappings of axes); the cells are the concatenation of
their products, so differently shaped sweeps share one file and one output folder:

    grid:
      - {model: [timm:resnet50], optimizer: [sgd], lr: [0.2]}
      - {model: [timm:vit_small_patch32_224], optimizer: [adamw], lr: [0.001]}

A cell's values are base, overridden by the cell's per_method entry, overridden by its axis
values: the most specific wins, so a sub-grid may sweep a key that per_method sets elsewhere
(e.g. SAM's rho 0.05 for CIFAR-10 from per_method, and an axis rho: [0.1] in a CIFAR-100 sub-grid).
Order is deterministic: sub-grids in file order, axes in file order, the last axis varying
fastest. Cells resolving to the same run (same config hash) are merged, the first one kept.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import optimizers

from .config import NON_IDENTITY_KEYS, HyperparameterError, RunConfig, _field_types
from .errors import UsageError

TOP_LEVEL_KEYS = ("base", "grid", "per_method", "tune")  # tune: bench.tuning
# PyYAML reads `1e-3` (no dot) as a string; for float keys we accept it as the number it means.
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Cell:
    """One fully resolved run of the grid, keyed by its config hash."""

    config: RunConfig
    settings: dict[str, Any] = field(default_factory=dict)  # what sets it apart: axis + per_method values

    @property
    def hash(self) -> str:
        return self.config.config_hash()

    @property
    def name(self) -> str:
        return self.config.run_name()

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()

    def describe(self) -> str:
        return " ".join(f"{k}={_show(v)}" for k, v in self.settings.items())


@dataclass(frozen=True)
class GridSpec:
    """A validated grid file (before expansion)."""

    where: str  # the file, for messages
    base: dict[str, Any]
    subgrids: list[dict[str, list[Any]]]
    per_method: dict[str, dict[str, Any]]
    tune: Any = None  # the raw `tune:` section, checked by bench.tuning.parse_tune

    def cells(self, out: str | None = None) -> list[Cell]:
        return expand(self, out=out)

    def iter_cells(self, out: str | None = None) -> Iterator[Cell]:
        return iter_cells(self, out=out)

    def num_combinations(self) -> int:
        return sum(_product_size(axes) for axes in self.subgrids)


def default_out(path: str | Path) -> str:
    return str(Path("runs") / Path(path).stem)


SHIPPED_GRIDS = Path(__file__).resolve().parent / "grids"  # the checkout's grids/, package data in a wheel


def shipped_grids() -> list[str]:
    return sorted(p.stem for p in SHIPPED_GRIDS.glob("*.yaml"))


def resolve_grid(path: str | Path) -> Path:
    """A grid file's path, or a shipped grid's name (`quick`, `paper-cifar`, ...) when no such file exists."""
    path = Path(path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    shipped = SHIPPED_GRIDS / f"{path.name}.yaml"
    if shipped.exists():
        return shipped
    raise UsageError(f"no grid file {str(path)!r} here and no shipped grid of that name; "
                     f"shipped grids: {', '.join(shipped_grids())}")


def load_grid(path: str | Path) -> GridSpec:
    path = resolve_grid(path)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read grid file {path}: {str(exc).splitlines()[0]}") from None
    return parse_grid(data, where=str(path))


def parse_grid(data: Any, *, where: str = "grid") -> GridSpec:
    """Check the file's shape and every key; values are checked per cell by `expand`."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: a grid file must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise UsageError(f"{where}: unknown top-level key {key!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    base = _run_keys(data.get("base") or {}, f"{where}: base")
    subgrids = _subgrids(data.get("grid", {}), where)
    per_method: dict[str, dict[str, Any]] = {}
    raw = data.get("per_method") or {}
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: per_method must map method names to run keys, got {raw!r}")
    for method, values in raw.items():
        if method not in optimizers.methods():
            raise UsageError(f"{where}: per_method.{method}: unknown method {method!r}; "
                             f"allowed methods are {', '.join(optimizers.methods())}")
        values = _run_keys(values or {}, f"{where}: per_method.{method}")
        if "method" in values:
            raise UsageError(f"{where}: per_method.{method}.method: per_method entries cannot change the method")
        if "out" in values:
            raise UsageError(f"{where}: per_method.{method}.out: the output folder is the grid's; set it in base")
        per_method[method] = values
    return GridSpec(where, base, subgrids, per_method, data.get("tune"))


def expand(spec: GridSpec, *, out: str | None = None) -> list[Cell]:
    """Every cell, validated with RunConfig.from_dict, in a deterministic order; nothing is written.

    `out` overrides base `out`; without either the folder is runs/<grid file stem>.
    """
    return list(iter_cells(spec, out=out))


def iter_cells(spec: GridSpec, *, out: str | None = None) -> Iterator[Cell]:
    """`expand`, one cell at a time: a huge grid is listed as it is expanded, never held whole
    (only the hashes seen, as integers, to merge cells resolving to the same run)."""
    out = out or spec.base.get("out") or default_out(spec.where)
    seen: set[int] = set()
    for axes in spec.subgrids:
        names = list(axes)
        for combo in itertools.product(*(axes[n] for n in names)):
            chosen = dict(zip(names, combo, strict=True))
            method = chosen.get("method", spec.base.get("method", RunConfig.method))
            extra = {k: v for k, v in spec.per_method.get(method, {}).items() if k not in chosen}
            values = {**spec.base, **extra, **chosen, "out": str(out)}
            settings = {**chosen, **extra}
            label = " ".join(f"{k}={_show(v)}" for k, v in settings.items()) or "base"
            try:
                config = RunConfig.from_dict(values, where=f"{spec.where}: cell {label}")
            except UsageError as exc:  # name the file and the cell; the message names the key
                text = str(exc)
                if isinstance(exc, HyperparameterError):
                    text += "; give it under per_method"
                if not text.startswith(spec.where):
                    text = f"{spec.where}: cell {label}: {text}"
                raise UsageError(text) from None
            cell = Cell(config, settings)
            key = int(cell.hash, 16)
            if key not in seen:
                seen.add(key)
                yield cell


# ---- helpers ---------------------------------------------------------------------------------------
def _run_keys(values: Any, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise UsageError(f"{where} must be a mapping of run keys to values, got {values!r}")
    out = {}
    for key, value in values.items():
        _check_key(key, where)
        out[key] = _coerce(key, value)
    return out


def _check_key(key: Any, where: str) -> None:
    if key not in RunConfig.keys():
        raise UsageError(f"{where}.{key}: {key!r} is not a run key; allowed keys are {', '.join(RunConfig.keys())}")


def _subgrids(raw: Any, where: str) -> list[dict[str, list[Any]]]:
    if isinstance(raw, dict) or raw is None:
        raw_list, labels = [raw or {}], ["grid"]
    elif isinstance(raw, list):
        if not raw:
            raise UsageError(f"{where}: grid is an empty list; give at least one sub-grid (a mapping of axes)")
        raw_list, labels = raw, [f"grid[{i}]" for i in range(len(raw))]
    else:
        raise UsageError(f"{where}: grid must be a mapping of run keys to lists of values "
                         f"(or a list of such mappings), got {raw!r}")
    subgrids = []
    for label, axes in zip(labels, raw_list, strict=True):
        if not isinstance(axes, dict):
            raise UsageError(f"{where}: {label} must be a mapping of run keys to lists of values, got {axes!r}")
        checked: dict[str, list[Any]] = {}
        for key, values in axes.items():
            _check_key(key, f"{where}: {label}")
            if key in NON_IDENTITY_KEYS:
                raise UsageError(f"{where}: {label}.{key}: {key} does not change a run's identity, so every value "
                                 "would be the same cell; set it in base")
            if not isinstance(values, list):
                raise UsageError(f"{where}: {label}.{key} must be a list of values, got {values!r}")
            if not values:
                raise UsageError(f"{where}: {label}.{key} is empty; give at least one value")
            checked[key] = [_coerce(key, v) for v in values]
        subgrids.append(checked)
    return subgrids


def _coerce(key: str, value: Any) -> Any:
    """YAML reads 1e-4 (no dot) as a string: make it the float the key expects."""
    hparam = optimizers.all_hparams().get(key)
    kind = hparam.type if hparam is not None else _field_types()[key][0]
    if kind is float and isinstance(value, str) and _FLOAT_TEXT.match(value):
        return float(value)
    return value


def _product_size(axes: dict[str, list[Any]]) -> int:
    size = 1
    for values in axes.values():
        size *= len(values)
    return size


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
