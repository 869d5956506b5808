"""Equal-budget tuning: a grid file's `tune:` section, the trials it makes, and the rule that picks a setting.

    tune:
      trials: 6                 # per method, its defaults included (trial 0)
      seeds: [100, 101]         # the tuning seeds
      final_seeds: [0, 1, 2, 3, 4]   # fresh seeds for the chosen settings (and the defaults), never tuning seeds
      design: halton            # or random: a seeded design in the unit cube, the same points for every method
      design_seed: 0
      select: final             # the read-out the choice uses: final (last epoch) or val_best (best epoch)
      space:                    # optional; default: lr and weight_decay, plus each method's spec.tunable
        all: {lr: [0.025, 0.4]}           # run keys tuned for every method
        saf: {lam: [0.05, 1.0], e_start: [1, 10]}   # exactly these keys for saf, within their allowed values

Every method gets the same number of trials and the same unit-cube points: the design is drawn once in
`MAX_DIMS` dimensions and each method reads its first d coordinates (the run keys first), so SGD's lr and weight
decay trials are the very ones every other method gets. Trial 0 is the method's setting as the grid gives it
(its defaults), so tuning can only beat the defaults on validation data, never lose them by skipping them.

Selection reads validation numbers only (`final_val_acc` or the best epoch's `val_acc`), never the test set:
the highest mean over the tuning seeds, a seed that failed or diverged counting as 0; ties go to the lower mean
training time of the finished seeds (a trial with none finished loses every tie), then to the earlier trial.
The lr and weight-decay ranges are anchored on the grid's `base` values unless `space.all` gives them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import optimizers
from optimizers.spec import SCALES, Search

from .errors import UsageError

DESIGNS = ("halton", "random")
READOUTS = ("final", "val_best")
MAX_DIMS = 8  # the design's dimensions: run keys plus a method's own tuned keys
TUNE_KEYS = ("trials", "seeds", "final_seeds", "design", "design_seed", "select", "space")
# Run keys worth tuning for every method, as factors of the grid's value (log scale): the base lr and its weight
# decay. A `space.all` entry gives absolute ranges instead.
RUN_SEARCH = {"lr": (0.25, 4.0), "weight_decay": (0.1, 10.0)}
SPACE_ALL = "all"


@dataclass(frozen=True)
class Dimension:
    """One tuned key of one method: its range, scale and type."""

    name: str
    search: Search
    kind: type


@dataclass(frozen=True)
class TuneSpec:
    """A validated `tune:` section."""

    trials: int
    seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    design: str
    design_seed: int
    select: str
    space: dict[str, dict[str, Dimension]]  # method -> tuned keys (run keys first), for every method tuned

    def identity(self) -> dict[str, Any]:
        """What decides the trials: stored beside them, so that a changed design is noticed."""
        return {"trials": self.trials, "seeds": list(self.seeds), "design": self.design,
                "design_seed": self.design_seed,
                "space": {m: {d.name: [d.search.low, d.search.high, d.search.scale] for d in dims.values()}
                          for m, dims in self.space.items()}}


def parse_tune(raw: Any, methods: Sequence[str], base: Mapping[str, Any], *, where: str) -> TuneSpec:
    """Check a `tune:` section against the methods' specs; one UsageError line for the first fault."""
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: tune must be a mapping with keys {', '.join(TUNE_KEYS)}")
    for key in raw:
        if key not in TUNE_KEYS:
            raise UsageError(f"{where}: tune.{key}: unknown key; allowed: {', '.join(TUNE_KEYS)}")
    trials = raw.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UsageError(f"{where}: tune.trials={trials!r} is invalid: allowed values are integers >= 1 "
                         "(trial 0 is each method's defaults)")
    seeds = _seeds(raw.get("seeds"), f"{where}: tune.seeds")
    final_seeds = _seeds(raw.get("final_seeds", [0, 1, 2, 3, 4]), f"{where}: tune.final_seeds")
    if len(final_seeds) < 5:
        raise UsageError(f"{where}: tune.final_seeds has {len(final_seeds)} seeds; give at least 5 fresh seeds")
    if shared := sorted(set(seeds) & set(final_seeds)):
        raise UsageError(f"{where}: tune.final_seeds: seed {shared[0]} is also a tuning seed; final numbers come "
                         "from seeds that took no part in the choice")
    design = raw.get("design", "halton")
    if design not in DESIGNS:
        raise UsageError(f"{where}: tune.design={design!r} is invalid: allowed values are {', '.join(DESIGNS)}")
    design_seed = raw.get("design_seed", 0)
    if isinstance(design_seed, bool) or not isinstance(design_seed, int) or design_seed < 0:
        raise UsageError(f"{where}: tune.design_seed={design_seed!r} is invalid: allowed values are integers >= 0")
    select = raw.get("select", "final")
    if select not in READOUTS:
        raise UsageError(f"{where}: tune.select={select!r} is invalid: allowed values are {', '.join(READOUTS)}")
    if not base.get("val_size"):
        raise UsageError(f"{where}: tune needs a validation split: set val_size (> 0) in base")
    space = _space(raw.get("space") or {}, methods, base, where=f"{where}: tune.space")
    return TuneSpec(trials, seeds, final_seeds, design, design_seed, select, space)


def _seeds(raw: Any, where: str) -> tuple[int, ...]:
    ok = isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw)
    if not ok or len(set(raw)) != len(raw):
        raise UsageError(f"{where}={raw!r} is invalid: give a list of distinct integers >= 0")
    return tuple(raw)


def _space(raw: Any, methods: Sequence[str], base: Mapping[str, Any], *, where: str) -> dict[str, dict[str, Dimension]]:
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must map `all` or method names to {{key: [low, high]}}")
    for name in raw:
        if name != SPACE_ALL and name not in methods:
            raise UsageError(f"{where}.{name}: not a method of this grid; its methods are {', '.join(methods)}")
    run_dims = {}
    given_all = raw.get(SPACE_ALL)
    if given_all is None:
        from .config import RunConfig

        for key, (lo, hi) in RUN_SEARCH.items():
            value = base.get(key, getattr(RunConfig, key))
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise UsageError(f"{where}: base {key}={value!r} is not a number to anchor its search range on")
            if value > 0:
                run_dims[key] = Dimension(key, Search(value * lo, value * hi, "log"), float)
    else:
        for key, rng in _mapping(given_all, f"{where}.all").items():
            if key not in RUN_SEARCH:
                raise UsageError(f"{where}.all.{key}: {key!r} cannot be tuned for every method; allowed run keys: "
                                 f"{', '.join(RUN_SEARCH)}")
            run_dims[key] = Dimension(key, _range(rng, f"{where}.all.{key}", _run_check(key), float, "log"), float)
    space = {}
    for method in methods:
        spec = optimizers.method_spec(method)
        dims = dict(run_dims)
        if method in raw:
            for key, rng in _mapping(raw[method], f"{where}.{method}").items():
                if key not in spec.defaults:
                    raise UsageError(f"{where}.{method}.{key}: {key!r} is not a hyperparameter of {method}; its "
                                     f"hyperparameters are {', '.join(spec.defaults) or 'none'}")
                hp = spec.hparam(key)
                if hp.type not in (int, float):
                    raise UsageError(f"{where}.{method}.{key}: only numbers can be tuned; {key} is {hp.type.__name__}")
                scale = hp.search.scale if hp.search else "linear"
                dims[key] = Dimension(key, _range(rng, f"{where}.{method}.{key}", hp.check, hp.type, scale), hp.type)
        else:
            dims.update({h.name: Dimension(h.name, h.search, h.type) for h in spec.tunable if h.search})
        if len(dims) > MAX_DIMS:
            raise UsageError(f"{where}.{method}: {len(dims)} tuned keys; at most {MAX_DIMS}")
        space[method] = dims
    return space


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"{where} must be a non-empty mapping of keys to [low, high] (or [low, high, scale])")
    return raw


def _run_check(key: str) -> Any:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or not math.isfinite(value):
            raise ValueError(f"{key}={value!r} is invalid: allowed values are finite numbers > 0")
        return float(value)
    return check


def _range(raw: Any, where: str, check: Any, kind: type, scale: str) -> Search:
    if not isinstance(raw, list) or len(raw) not in (2, 3):
        raise UsageError(f"{where}={raw!r} is invalid: give [low, high] or [low, high, scale]")
    if len(raw) == 3:
        scale = raw[2]
        if scale not in SCALES:
            raise UsageError(f"{where}: scale {scale!r} is invalid: allowed values are {', '.join(SCALES)}")
    try:
        low, high = (check(float(v) if kind is float and isinstance(v, str) else v) for v in raw[:2])
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{where}: {exc}") from None
    if not low < high:
        raise UsageError(f"{where}={raw[:2]!r} is invalid: low must be below high")
    if scale == "log" and low <= 0 or scale == "log1m" and high >= 1:
        raise UsageError(f"{where}={raw[:2]!r} is invalid on the {scale} scale")
    return Search(low, high, scale)


# ---- the design ----------------------------------------------------------------------------------
def unit_design(spec: TuneSpec) -> np.ndarray:
    """(trials - 1, MAX_DIMS) points in [0, 1): the same for every method (trial 0 is the defaults)."""
    n = spec.trials - 1
    if n == 0:
        return np.zeros((0, MAX_DIMS))
    if spec.design == "halton":
        from scipy.stats import qmc

        return qmc.Halton(d=MAX_DIMS, scramble=True, seed=spec.design_seed).random(n)
    return np.random.default_rng(spec.design_seed).random((n, MAX_DIMS))


def trial_settings(spec: TuneSpec, method: str, defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The method's trials: trial 0 its defaults (`defaults`: the grid's values, else RunConfig's and the spec's),
    then one per design point, each key read from its coordinate (run keys first, in the space's order)."""
    dims = list(spec.space[method].values())
    trials = [{d.name: defaults[d.name] for d in dims}]
    for point in unit_design(spec):
        trials.append({d.name: d.search.value(float(u), d.kind) for d, u in zip(dims, point, strict=False)})
    return trials


# ---- the choice ----------------------------------------------------------------------------------
def val_readout(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The validation read-outs of a run's finite epochs: the last epoch's validation accuracy, the epoch of the
    highest (ties to the earlier) and the test accuracy there. Chosen on validation numbers alone."""
    scored = [r for r in rows if r.get("val_acc") is not None]
    if not scored:
        return {"final_val_acc": None, "best_val_acc": None, "val_best_epoch": None, "test_acc_at_val_best": None}
    best = max(scored, key=lambda r: (r["val_acc"], -r["epoch"]))
    return {"final_val_acc": scored[-1]["val_acc"], "best_val_acc": best["val_acc"],
            "val_best_epoch": int(best["epoch"]), "test_acc_at_val_best": best["test_acc"]}


def readout_value(row: Mapping[str, Any], readout: str) -> float:
    """A trial run's validation accuracy at the read-out; 0 for a run that failed, diverged or has none."""
    if row.get("status") != "finished":
        return 0.0
    value = row.get("final_val_acc") if readout == "final" else row.get("best_val_acc")
    return float(value) if value is not None and math.isfinite(value) else 0.0


def choose(rows: Sequence[Mapping[str, Any]], readout: str) -> dict[str, Any]:
    """The winning trial of one method from its tuning rows (keys: trial, setting, seed, status, final_val_acc,
    best_val_acc, train_time_s): highest mean validation accuracy over seeds, ties to the lower mean training
    time, then the earlier trial. Test numbers are never read."""
    by_trial: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_trial.setdefault(int(row["trial"]), []).append(row)
    scored = []
    for trial, group in sorted(by_trial.items()):
        acc = float(np.mean([readout_value(r, readout) for r in group]))
        times = [r.get("train_time_s") for r in group if r.get("status") == "finished"]
        times = [float(t) for t in times if t is not None and math.isfinite(t)]
        cost = float(np.mean(times)) if times else math.inf  # a trial with no finished seed never wins a tie
        scored.append((-round(acc, 12), cost, trial, acc, group[0]["setting"]))
    _, cost, trial, acc, setting = min(scored)
    return {"trial": trial, "setting": setting, "mean_val_acc": acc, "mean_train_time_s": cost,
            "seeds": sorted(int(r["seed"]) for r in by_trial[trial]), "readout": readout}
