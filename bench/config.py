"""One run's configuration: plain data, validated once at the boundary, then trusted inside.

Every key is also a `safbench run` flag (underscores become hyphens, with the help text below) and a
grid-file key. The run-level keys are the fields here; the method keys come from the registered
methods' specs (`optimizers.MethodSpec`), so a new method's hyperparameters need no line here.
Method hyperparameters left unset take the method's own defaults (the papers'), and the resolved
config records the values actually used, so equal experiments hash equally.
"""

from __future__ import annotations

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
# Keys that say where or how to run, not what: they do not change the cell's identity.
NON_IDENTITY_KEYS = ("out", "data_root", "download", "num_workers", "device", "progress", "compile", "tensorboard",
                     "allow_input_mismatch")
# The method keys every run identity has carried since the first release (None where they do not apply).
# Keys added since join the identity only when set away from their default, so adding a key renames no run.
_V1_METHOD_KEYS = ("rho", "adaptive", "beta", "gamma", "lam", "tau", "e_tilde", "e_start", "ema_decay", "store_dtype")
_V1_RUN_KEYS = ("method", "dataset", "model", "epochs", "batch_size", "lr", "seed", "optimizer", "momentum",
                "weight_decay", "nesterov", "label_smoothing", "schedule", "warmup_epochs", "lr_milestones",
                "lr_gamma", "bn_update", "device", "precision", "channels_last", "compile", "data_root",
                "download", "train_subset", "num_workers", "eval_batch_size", "out", "progress", "hessian",
                "hessian_epochs", "hessian_samples")


class HyperparameterError(UsageError):
    """A method hyperparameter given to a method that does not declare it."""


def _key(default: Any = None, help: str = "", choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    meta = {"help": help, "choices": choices}
    if "default_factory" in kw:
        return field(default_factory=kw["default_factory"], metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    method: str = _key("sgd", "training method (see the method table in README.md)")
    dataset: str = _key("cifar10", "dataset name")
    model: str = _key("resnet18", "model name, or timm:<name>")
    epochs: int = _key(200, "epochs to train")
    batch_size: int = _key(128, "batch size per process (under DDP per rank: the global batch is this x world size)")
    lr: float = _key(0.1, "peak learning rate of the base optimizer")
    seed: int = _key(0, "seed of weights, data order and augmentation, and (derived) of a method's own draws")
    # Base optimizer and schedule. Defaults follow the SAF paper's CIFAR setup (SGD, momentum 0.9,
    # weight decay 5e-4, cosine to zero); warm-up is not in the paper and defaults to none.
    optimizer: str = _key("sgd", "base optimizer (SGD with momentum for ResNets, AdamW for ViTs)", OPTIMIZERS)
    momentum: float = _key(0.9, "SGD momentum")
    weight_decay: float = _key(5e-4, "weight decay of the base optimizer")
    nesterov: bool = _key(False, "Nesterov momentum (SGD)")
    label_smoothing: float = _key(0.0, "label smoothing of the cross-entropy, in [0, 1)")
    schedule: str = _key("cosine", "learning-rate schedule, stepped once per batch", SCHEDULES)
    warmup_epochs: int = _key(0, "epochs of linear warm-up before the schedule")
    lr_milestones: list[int] = _key(help="step schedule: epochs at which lr *= lr_gamma", default_factory=list)
    lr_gamma: float = _key(0.1, "step schedule: the factor at each milestone")
    bn_update: str = _key("clean", "BatchNorm running statistics: updated by the clean pass only, or by every pass",
                          optimizers.BN_UPDATES)
    # Execution.
    device: str = _key("auto", "training device (auto: cuda if visible)", DEVICES)
    precision: str = _key("auto", "compute precision (auto: bf16 on CUDA, fp32 on the CPU)", PRECISIONS)
    channels_last: bool | None = _key(None, "channels_last memory format (default: on for CUDA)")
    compile: bool = _key(False, "torch.compile the model")
    data_root: str | None = _key(None, "dataset folder (default: $SAFBENCH_DATA or ~/.cache/safbench/data)")
    download: bool = _key(False, "download the dataset with torchvision if it is missing")
    train_subset: int | None = _key(None, "train on the first N training samples only")
    allow_input_mismatch: bool = _key(False, "train a model on images of the other size than it is built for (a "
                                             "CIFAR net on ImageNet, a timm net on CIFAR)")
    augment: bool = _key(True, "training augmentation (random crop; flips where the dataset has them)")
    label_noise: float = _key(0.0, "fraction of training labels replaced by a different class drawn uniformly "
                                   "(symmetric noise; the test set stays clean)")
    label_noise_seed: str = _key("fixed", "which noisy labels: one fixed draw for every run (fixed), or a draw per "
                                          "run seed, the same for every method of that seed (run)", ("fixed", "run"))
    val_size: int = _key(0, "hold out N training images as a validation set (val_loss/val_acc every epoch; the "
                            "same images for every method and seed; taken from beyond train_subset when there is "
                            "room, so the training set is unchanged). Label noise applies to them as to training "
                            "labels: a user has no clean labels. Selection reads them, never the test set")
    val_split_seed: int = _key(0, "seed of the validation split's draw (its own, never the run seed)")
    num_workers: int | None = _key(None, "data-loader workers of streamed datasets (default: the cores this process "
                                         "may use, shared among a node's torchrun processes)")
    eval_batch_size: int | None = _key(None, "evaluation batch size (default: batch_size)")
    out: str = _key("runs", "folder for run directories")
    progress: bool = _key(True, "progress bars on a terminal")
    tensorboard: bool = _key(False, "also write each epoch's metrics row as TensorBoard scalars (run dir/tensorboard)")
    # Flatness at the end of the run (and at chosen epochs): writes hessian.json / hessian_epochs.csv.
    hessian: bool = _key(False, "lambda_max and trace of the final model's Hessian (hessian.json)")
    hessian_epochs: list[int] = _key(help="epochs after which to also measure the Hessian", default_factory=list)
    hessian_samples: int = _key(1000, "fixed training samples for the Hessian")
    # SAM's one-step sharpness every epoch (metrics.csv column `sharpness`).
    sharpness: bool = _key(False, "log SAM's sharpness L(w + rho g/||g||) - L(w) after every epoch")
    sharpness_samples: int = _key(1024, "fixed, un-augmented training samples for the sharpness")
    sharpness_rho: float = _key(0.05, "radius rho of the sharpness measure")
    adaptive_sharpness_rho: float = _key(0.5, "radius of ASAM's adaptive sharpness, logged beside it (the official "
                                              "ASAM code's default; its scale is |w|-relative, not SAM's)")
    # Method hyperparameters given by the user (flat keys at every boundary; None: the method's default).
    method_hparams: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str) -> Any:
        # config.rho and friends: the value given, else None (the method's default applies).
        if name != "method_hparams" and name in optimizers.all_hparams():
            return self.__dict__.get("method_hparams", {}).get(name)
        raise AttributeError(name)

    # ---- construction and validation -----------------------------------------------------------
    @classmethod
    def run_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "method_hparams")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key a config, a flag or a grid file may set: the run keys, then every method's hyperparameters."""
        return cls.run_keys() + tuple(optimizers.all_hparams())

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "config") -> RunConfig:
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise UsageError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(cls.keys())}")
        run_keys = set(cls.run_keys())
        config = cls(**{k: v for k, v in values.items() if k in run_keys},
                     method_hparams={k: v for k, v in values.items() if k not in run_keys and v is not None})
        config.validate()
        return config

    @classmethod
    def from_record(cls, values: dict[str, Any]) -> RunConfig:
        """A run directory's stored config.yaml, trusted as written (its device may not exist here)."""
        values = {k: v for k, v in values.items() if k != "method_seed"}
        run_keys = set(cls.run_keys())
        return cls(**{k: v for k, v in values.items() if k in run_keys},
                   method_hparams={k: v for k, v in values.items() if k not in run_keys and v is not None})

    @classmethod
    def from_yaml(cls, path: str | Path) -> dict[str, Any]:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise UsageError(f"config {path} must be a mapping of run keys to values")
        values.pop("method_seed", None)  # recorded for the reader; always derived from seed and method
        return values

    def validate(self) -> None:
        from .data import DATASETS
        from .models import MODELS

        self._check_types()
        _choice("method", self.method, optimizers.methods())
        _choice("dataset", self.dataset, DATASETS)
        if not (self.model in MODELS or (self.model.startswith("timm:") and len(self.model) > 5)):
            raise UsageError(f"model={self.model!r} is invalid: allowed models are {', '.join(MODELS)} "
                             "or timm:<name>")
        from .data import IMAGE_SIZES
        from .models.fit import check_input_size

        check_input_size(self.model, self.dataset, IMAGE_SIZES.get(self.dataset), allow=self.allow_input_mismatch)
        for f in fields(self):
            if f.metadata.get("choices"):
                _choice(f.name, getattr(self, f.name), f.metadata["choices"])
        for name in ("epochs", "batch_size", "hessian_samples", "sharpness_samples"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name}={getattr(self, name)} is invalid: allowed values are integers >= 1")
        outside = [e for e in self.hessian_epochs if not 0 <= e < self.epochs]
        if outside:  # refused before training, not found out when the epoch never comes
            raise UsageError(f"hessian_epochs={outside[0]} is invalid: allowed values are epochs 0..{self.epochs - 1} "
                             "(0-based, as in metrics.csv)")
        for name in ("warmup_epochs", "num_workers", "seed", "val_size", "val_split_seed"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UsageError(f"{name}={getattr(self, name)} is invalid: allowed values are integers >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"lr={self.lr} is invalid: allowed values are finite numbers > 0")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum={self.momentum} is invalid: allowed values lie in [0, 1)")
        if self.weight_decay < 0:
            raise UsageError(f"weight_decay={self.weight_decay} is invalid: allowed values are >= 0")
        if not 0 <= self.label_noise < 1:
            raise UsageError(f"label_noise={self.label_noise} is invalid: allowed values lie in [0, 1)")
        if self.label_noise_seed == "run" and self.label_noise == 0:
            raise UsageError("label_noise_seed='run' draws noisy labels per seed, but label_noise is 0; "
                             "set label_noise > 0 or leave label_noise_seed at fixed")
        for name in ("sharpness_rho", "adaptive_sharpness_rho"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise UsageError(f"{name}={getattr(self, name)} is invalid: allowed values are finite numbers > 0")
        for name in ("train_subset", "eval_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"{name}={getattr(self, name)} is invalid: allowed values are integers >= 1")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("device='cuda' is invalid here: no CUDA device is visible; allowed: cpu, auto")
        self._check_method_hparams()

    def _check_types(self) -> None:
        for f in fields(self):
            if f.name == "method_hparams":
                continue
            kind, optional, is_list = _field_types()[f.name]
            value = getattr(self, f.name)
            if value is None and optional:
                continue
            if is_list:
                ints = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                if not ints:
                    raise UsageError(f"{f.name}={value!r} is invalid: expected a list of integers")
                continue
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
                continue
            if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
                raise UsageError(f"{f.name}={value!r} is invalid: expected {kind.__name__}")

    def _check_method_hparams(self) -> None:
        spec = optimizers.method_spec(self.method)
        for name in self.method_hparams:
            if name not in spec.defaults:
                takers = [m for m in optimizers.methods() if name in optimizers.method_hparams(m)]
                raise HyperparameterError(f"{name} is not a hyperparameter of method {self.method!r}; "
                                          f"it applies to {', '.join(takers)}")
        try:
            self.method_hparams = {k: spec.hparam(k).check(v) for k, v in self.method_hparams.items()}
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    # ---- derived views -----------------------------------------------------------------------
    def method_kwargs(self, *, num_samples: int, num_classes: int, lr_range: tuple[float, float] | None = None
                      ) -> dict[str, Any]:
        """Keyword arguments for `optimizers.create`: hyperparameters plus what the spec says the method needs."""
        spec = optimizers.method_spec(self.method)
        kwargs = self.hparams()
        if spec.needs_indices:
            kwargs.update(num_samples=num_samples, num_classes=num_classes)
        if spec.draws_random:
            kwargs["seed"] = self.method_seed()
        if spec.needs_lr_range:
            kwargs["lr_max"], kwargs["lr_min"] = lr_range if lr_range is not None else (self.lr, self.lr)
        return kwargs

    def method_seed(self) -> int | None:
        """The seed of the method's own random draws (derived from `seed`), or None if it draws none."""
        if not optimizers.method_spec(self.method).draws_random:
            return None
        return optimizers.method_seed(self.seed, self.method)

    def label_noise_draw(self) -> int:
        """The seed of the label-noise draw: the fixed one, or one derived from the run seed."""
        from .data.resident import LABEL_NOISE_SEED, label_noise_seed

        return label_noise_seed(self.seed) if self.label_noise_seed == "run" else LABEL_NOISE_SEED

    def hparams(self) -> dict[str, Any]:
        """The method hyperparameters in effect: given values, else the method's defaults."""
        return optimizers.method_spec(self.method).check(self.method_hparams)

    def resolved(self, device_type: str | None = None) -> RunConfig:
        """A copy with method defaults filled in; with `device_type`, also device, precision and channels_last."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method_hparams"}
        if device_type is not None:
            values["device"] = device_type
            if values["precision"] == "auto":
                values["precision"] = "bf16" if device_type == "cuda" else "fp32"
            if values["channels_last"] is None:
                values["channels_last"] = device_type == "cuda"
            if values["num_workers"] is None:
                from .data.base import default_workers

                values["num_workers"] = default_workers()
        return RunConfig(**values, method_hparams=self.hparams())

    def to_dict(self) -> dict[str, Any]:
        """Flat: the run keys, then the method's hyperparameters (and the derived method seed, if any)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method_hparams"}
        values.update(self.method_hparams)
        if (seed := self.method_seed()) is not None:
            values["method_seed"] = seed
        return values

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same experiment (hashed into the run directory's name)."""
        values = self.resolved().to_dict()
        if values["device"] in ("cpu", "cuda"):
            # A stored config.yaml holds the device-resolved values: hash them as the 'auto' they came from,
            # so that the record names the same run as the request that made it.
            if values["precision"] == ("bf16" if values["device"] == "cuda" else "fp32"):
                values["precision"] = "auto"
            if values["channels_last"] == (values["device"] == "cuda"):
                values["channels_last"] = None
        defaults = {f.name: (f.default_factory() if callable(f.default_factory) else f.default) for f in fields(self)}
        for k in NON_IDENTITY_KEYS:
            values.pop(k)
        for k in _V1_METHOD_KEYS:
            values.setdefault(k, None)
        for k in list(values):
            if k in defaults and k not in _V1_RUN_KEYS and values[k] == defaults[k]:
                del values[k]
        for hp in optimizers.method_spec(self.method).hparams:
            if hp.added_later and values.get(hp.name) == hp.default:
                del values[hp.name]
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


def _field_types() -> dict[str, tuple[type, bool, bool]]:
    """Run key -> (value type, may be None, is a list of ints), from the annotations themselves."""
    import types
    import typing

    if not _FIELD_TYPES:
        for name, hint in typing.get_type_hints(RunConfig).items():
            args = typing.get_args(hint)
            optional = isinstance(hint, types.UnionType) and type(None) in args
            if optional:
                hint = next(a for a in args if a is not type(None))
            is_list = typing.get_origin(hint) is list
            _FIELD_TYPES[name] = (list if is_list else hint, optional, is_list)
    return _FIELD_TYPES


_FIELD_TYPES: dict[str, tuple[type, bool, bool]] = {}
