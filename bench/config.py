"""One run's configuration: plain data, validated once at the boundary, then trusted inside.

Every key is also a `safbench run` flag (underscores become hyphens) and a grid-file key.
Method hyperparameters left at None take the method's own defaults (the papers'), and the
resolved config records the values actually used, so equal experiments hash equally.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

import optimizers

from .errors import UsageError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto",) + optimizers.PRECISIONS
# Method hyperparameters as flags; each applies only to the methods that declare it.
METHOD_HPARAMS = ("rho", "adaptive", "beta", "gamma", "lam", "tau", "e_tilde", "e_start", "ema_decay", "store_dtype")
# Keys that say where or how to run, not what: they do not change the cell's identity.
NON_IDENTITY_KEYS = ("out", "data_root", "download", "num_workers", "device", "progress", "compile")


@dataclass
class RunConfig:
    method: str = "sgd"
    dataset: str = "cifar10"
    model: str = "resnet18"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    seed: int = 0
    # Base optimizer and schedule. Defaults follow the SAF paper's CIFAR setup (SGD, momentum 0.9,
    # weight decay 5e-4, cosine to zero); warm-up is not in the paper and defaults to none.
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: int = 0
    lr_milestones: list[int] = field(default_factory=list)  # step schedule: epochs where lr *= lr_gamma
    lr_gamma: float = 0.1
    # Method hyperparameters (None: the method's default).
    rho: float | None = None
    adaptive: bool | None = None
    beta: float | None = None
    gamma: float | None = None
    lam: float | None = None
    tau: float | None = None
    e_tilde: int | None = None
    e_start: int | None = None
    ema_decay: float | None = None
    store_dtype: str | None = None
    bn_update: str = "clean"
    # Execution.
    device: str = "auto"
    precision: str = "auto"  # bf16 on CUDA, fp32 on the CPU
    channels_last: bool | None = None  # default: on for CUDA conv nets
    compile: bool = False
    data_root: str | None = None
    download: bool = False
    train_subset: int | None = None
    num_workers: int = 4
    eval_batch_size: int | None = None
    out: str = "runs"
    progress: bool = True
    # Flatness at the end of the run (and at chosen epochs): writes hessian.json / hessian_epochs.csv.
    hessian: bool = False
    hessian_epochs: list[int] = field(default_factory=list)
    hessian_samples: int = 1000

    # ---- construction and validation -----------------------------------------------------------
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "config") -> RunConfig:
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise UsageError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(cls.keys())}")
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> dict[str, Any]:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise UsageError(f"config {path} must be a mapping of run keys to values")
        return values

    def validate(self) -> None:
        from .data import DATASETS
        from .models import MODELS

        self._check_types()
        _choice("method", self.method, optimizers.METHODS)
        _choice("dataset", self.dataset, DATASETS)
        if not (self.model in MODELS or (self.model.startswith("timm:") and len(self.model) > 5)):
            raise UsageError(f"model={self.model!r} is invalid: allowed models are {', '.join(MODELS)} "
                             "or timm:<name>")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("bn_update", self.bn_update, optimizers.BN_UPDATES)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name}={getattr(self, name)} is invalid: allowed values are integers >= 1")
        for name in ("warmup_epochs", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name}={getattr(self, name)} is invalid: allowed values are integers >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"lr={self.lr} is invalid: allowed values are finite numbers > 0")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum={self.momentum} is invalid: allowed values lie in [0, 1)")
        if self.weight_decay < 0:
            raise UsageError(f"weight_decay={self.weight_decay} is invalid: allowed values are >= 0")
        if self.train_subset is not None and self.train_subset < 1:
            raise UsageError(f"train_subset={self.train_subset} is invalid: allowed values are integers >= 1")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise UsageError(f"eval_batch_size={self.eval_batch_size} is invalid: allowed values are integers >= 1")
        if self.hessian_samples < 1:
            raise UsageError(f"hessian_samples={self.hessian_samples} is invalid: allowed values are integers >= 1")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("device='cuda' is invalid here: no CUDA device is visible; allowed: cpu, auto")
        self._check_method_hparams()

    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = _expected_types(f.type)
            if value is None and type(None) in expected:
                continue
            if isinstance(value, bool) and bool not in expected:
                raise UsageError(f"{f.name}={value!r} is invalid: expected {f.type}")
            if float in expected and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if not isinstance(value, tuple(expected)):
                raise UsageError(f"{f.name}={value!r} is invalid: expected {f.type}")
            if isinstance(value, list) and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise UsageError(f"{f.name}={value!r} is invalid: expected a list of integers")

    def _check_method_hparams(self) -> None:
        declared = optimizers.method_hparams(self.method)
        for name in METHOD_HPARAMS:
            if getattr(self, name) is not None and name not in declared:
                takers = [m for m in optimizers.METHODS if name in optimizers.method_hparams(m)]
                raise UsageError(f"{name} is not a hyperparameter of method {self.method!r}; "
                                 f"it applies to {', '.join(takers)}")
        # The optimizers package owns the rules; a throw-away model lets it check them here.
        probe = torch.nn.Linear(1, 1)
        try:
            optimizers.create(self.method, probe, torch.optim.SGD(probe.parameters(), lr=0.1),
                              **self.method_kwargs(num_samples=1, num_classes=1))
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    # ---- derived views -----------------------------------------------------------------------
    def method_kwargs(self, *, num_samples: int, num_classes: int) -> dict[str, Any]:
        declared = optimizers.method_hparams(self.method)
        kwargs = {k: getattr(self, k) for k in METHOD_HPARAMS if k in declared and getattr(self, k) is not None}
        if "num_samples" in declared:
            kwargs.update(num_samples=num_samples, num_classes=num_classes)
        return kwargs

    def hparams(self) -> dict[str, Any]:
        """The method hyperparameters in effect: given values, else the method's defaults."""
        declared = optimizers.method_hparams(self.method)
        return {k: (getattr(self, k) if getattr(self, k) is not None else declared[k])
                for k in METHOD_HPARAMS if k in declared}

    def resolved(self) -> RunConfig:
        """A copy with method defaults filled in and keys that do not apply to the method cleared."""
        values = dataclasses.asdict(self)
        for k in METHOD_HPARAMS:
            values[k] = None
        values.update(self.hparams())
        return RunConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        values = self.resolved().to_dict()
        for k in NON_IDENTITY_KEYS:
            values.pop(k)
        return values

    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def run_name(self) -> str:
        model = self.model.replace("timm:", "timm_").replace("/", "_")
        return f"{self.dataset}-{model}-{self.method}-s{self.seed}-{self.config_hash()}"

    def run_dir(self) -> Path:
        return Path(self.out) / self.run_name()


def _choice(name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise UsageError(f"{name}={value!r} is invalid: allowed values are {', '.join(allowed)}")


def _expected_types(annotation: Any) -> set[type]:
    text = str(annotation)
    table = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None), "list": list}
    return {t for name, t in table.items() if name in text.replace("list[int]", "list")}
