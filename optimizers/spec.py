"""A method's declaration of itself: its hyperparameters and needs, written once (as timm's OptimInfo).

Config keys, `safbench run` flags with their help, grid-key validation, the overhead benchmark's
view of a method and the README's method table are all derived from these specs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_INF = float("inf")


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    """Raise ValueError unless `value` lies in the interval; the message names value and interval."""
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} is invalid: allowed values lie in {interval}")


SCALES = ("linear", "log", "log1m")


@dataclass(frozen=True)
class Search:
    """Where a hyperparameter is worth tuning: the range [low, high] and the scale that a design is uniform in
    (`log`: in log x, for radii and weights; `log1m`: in log(1 - x), for decays near 1)."""

    low: float
    high: float
    scale: str = "linear"

    def value(self, u: float, kind: type) -> Any:
        """The point at fraction u in [0, 1) of the range (integers: each of low..high equally likely)."""
        if kind is int:
            return int(min(self.high, self.low + int(u * (self.high - self.low + 1))))
        if self.scale == "log":
            return float(self.low * (self.high / self.low) ** u)
        if self.scale == "log1m":
            return float(1 - (1 - self.low) * ((1 - self.high) / (1 - self.low)) ** u)
        return float(self.low + u * (self.high - self.low))


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: type, default (with where it comes from), allowed values and a one-line help."""

    name: str
    type: type  # bool, int, float or str
    default: Any
    help: str
    source: str = ""  # where the default comes from (a paper's section or table)
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    # Added to a method after runs of it were made: names a run (joins its config hash) only when set away
    # from the default, so that those runs keep their names.
    added_later: bool = False
    search: Search | None = None  # worth tuning, over this range (bench.tuning); None: fixed by its paper
    # Changes the work of a step: the step benchmark (at the defaults) does not price other values of it.
    sets_cost: bool = False

    def check(self, value: Any) -> Any:
        """The value as this type, or ValueError naming the value and what is allowed."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name}={value!r} is invalid: allowed values are true, false")
            return value
        if self.type is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                allowed = ", ".join(self.choices or ())
                raise ValueError(f"{self.name}={value!r} is invalid: allowed values are {allowed}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}={value!r} is invalid: expected {self.type.__name__}")
        if self.type is int:
            if int(value) != value:
                raise ValueError(f"{self.name}={value!r} is invalid: allowed values are integers "
                                 f"{self.interval()}")
            value = int(value)
            if self.high is None and self.low is not None and value < self.low:
                raise ValueError(f"{self.name}={value!r} is invalid: allowed values are integers >= {self.low:g}")
        else:
            value = float(value)
        check_range(self.name, value, -_INF if self.low is None else self.low, _INF if self.high is None else self.high,
                    low_open=self.low_open or self.low is None, high_open=self.high_open or self.high is None)
        return value

    def interval(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{low}, {high}{right}"

    def allowed(self) -> str:
        """What the help text and the README say is allowed."""
        if self.type is bool:
            return "true/false"
        if self.choices:
            return " | ".join(self.choices)
        return f"{self.type.__name__} in {self.interval()}"


@dataclass(frozen=True)
class MethodSpec:
    """What a method needs from a run, and what it costs."""

    name: str
    summary: str  # one line: what a step does
    paper: str  # the method's paper
    hparams: tuple[HParam, ...] = ()
    needs_indices: bool = False  # step() needs each sample's dataset index, the method the dataset's size
    draws_random: bool = False  # takes a `seed`, derived from the run seed by `method_seed`
    needs_lr_range: bool = False  # takes `lr_max` / `lr_min` of the run's schedule (GSAM's rho schedule)
    passes: float = 1.0  # forward-backward passes per step, on average, once active
    title: str = ""  # the name as its paper writes it (LookSAM); empty: the name in capitals
    # The first epoch (0-based) at which the method does all of its extra work, from its hyperparameters.
    active_from: Callable[[Mapping[str, Any]], int] = field(default=lambda hp: 0, compare=False)
    # Steps after which the per-step work repeats (LookSAM: k); benchmarks time whole cycles.
    cycle: Callable[[Mapping[str, Any]], int] = field(default=lambda hp: 1, compare=False)

    def __post_init__(self) -> None:
        names = [h.name for h in self.hparams]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.name!r} declares a hyperparameter twice: {names}")

    @property
    def display(self) -> str:
        return self.title or self.name.upper()

    @property
    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hparams}

    @property
    def tunable(self) -> tuple[HParam, ...]:
        """The hyperparameters worth tuning (those with a search range), in declaration order."""
        return tuple(h for h in self.hparams if h.search is not None)

    def hparam(self, name: str) -> HParam:
        for h in self.hparams:
            if h.name == name:
                return h
        raise KeyError(name)

    def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every value checked; ValueError on an unknown or invalid one."""
        known = self.defaults
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{unknown[0]} is not a hyperparameter of method {self.name!r}; its hyperparameters "
                             f"are {', '.join(known) or 'none'}")
        return {h.name: h.check(values.get(h.name, h.default)) for h in self.hparams}


def method_seed(run_seed: int, method: str) -> int:
    """The seed of a method's own random draws (ESAM's tensor choice): derived from the run seed and the
    method's name, so that seeds differ per run but never coincide with the weight-init stream."""
    digest = hashlib.sha256(f"safbench:{method}:{int(run_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def method_table(specs: list[MethodSpec]) -> str:
    """The README's method table, rendered from the specs (a test keeps README.md equal to it)."""
    lines = ["| method | what a step does | passes | hyperparameters (defaults) |", "| --- | --- | --- | --- |"]
    for spec in specs:
        hparams = ", ".join(f"`{h.name}={h.default}`" for h in spec.hparams) or "—"
        lines.append(f"| `{spec.name}` | {spec.summary} | {spec.passes:.3g} | {hparams} |")
    return "\n".join(lines)
