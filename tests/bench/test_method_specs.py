"""Methods declare themselves once: config keys, flags, grid keys, seeds and the README follow from the specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import optimizers
from bench.cli import build_parser, main
from bench.config import RunConfig
from bench.data.resident import symmetric_label_noise
from bench.errors import UsageError
from bench.grid import expand, load_grid
from bench.run import Run, run
from bench.sharpness import sam_sharpness
from optimizers.spec import HParam, MethodSpec, method_table
from tests.cli_util import run_main

REPO = Path(__file__).resolve().parents[2]


def tiny(out: Path, **overrides) -> RunConfig:
    values = dict(dataset="synthetic", model="mlp_tiny", epochs=1, batch_size=16, lr=0.05, train_subset=64,
                  device="cpu", out=str(out), num_workers=0, progress=False)
    values.update(overrides)
    return RunConfig.from_dict(values)


# ---- a toy method registered by the test appears everywhere ------------------------------------------
class Toy(optimizers.SGD):
    name = "toy"
    spec = MethodSpec(name="toy", summary="SGD with a toy knob", paper="none", draws_random=True,
                      hparams=(HParam("toy_knob", int, 3, "a knob only the toy method has", low=1),
                               HParam("toy_mode", str, "a", "a choice only the toy method has", choices=("a", "b"))))

    def __init__(self, model, base_optimizer, *, toy_knob: int = 3, toy_mode: str = "a", seed: int = 0, **common):
        super().__init__(model, base_optimizer, **common)
        hp = self.spec.check({"toy_knob": toy_knob, "toy_mode": toy_mode})
        self.toy_knob, self.toy_mode, self.seed = hp["toy_knob"], hp["toy_mode"], seed


@pytest.fixture
def toy_method():
    optimizers.register_method(Toy)
    yield Toy
    optimizers.unregister_method("toy")


def test_a_registered_method_appears_as_flags_grid_keys_help_and_resolved_config(toy_method, tmp_path: Path,
                                                                                 capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    help_text = capsys.readouterr().out
    assert "--toy-knob" in help_text and "a knob only the toy method has" in help_text
    assert "{a,b}" in help_text and "toy" in help_text.split("--method")[1].splitlines()[0]

    assert {"toy_knob", "toy_mode"} <= set(RunConfig.keys())
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": {"dataset": "synthetic", "model": "mlp_tiny", "epochs": 1,
                                             "batch_size": 16, "train_subset": 64, "device": "cpu"},
                                    "grid": {"method": ["sgd", "toy"]},
                                    "per_method": {"toy": {"toy_knob": 5}}}))
    cells = expand(load_grid(grid), out=str(tmp_path / "runs"))
    toy = next(c for c in cells if c.config.method == "toy")
    assert toy.config.resolved().toy_knob == 5 and toy.config.resolved().toy_mode == "a"

    summary = run(toy.config, command="test")
    stored = yaml.safe_load((toy.config.run_dir() / "config.yaml").read_text())
    assert stored["toy_knob"] == 5 and stored["toy_mode"] == "a"
    assert stored["method_seed"] == summary["method_seed"] == optimizers.method_seed(0, "toy")

    bad = tiny(tmp_path, method="sgd").to_dict() | {"toy_knob": 2}
    with pytest.raises(Exception, match="toy_knob is not a hyperparameter of method 'sgd'; it applies to toy"):
        RunConfig.from_dict(bad)
    with pytest.raises(Exception, match=r"toy_knob=0 is invalid: allowed values are integers >= 1"):
        tiny(tmp_path, method="toy", toy_knob=0)


def test_every_run_flag_has_help_text(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["run"]
    undocumented = [a.option_strings[0] for a in sub._actions if a.option_strings and not a.help]
    assert undocumented == []


def test_readme_method_table_is_the_one_the_specs_render() -> None:
    table = method_table([optimizers.method_spec(m) for m in optimizers.METHODS])
    assert table in (REPO / "README.md").read_text()


def test_spec_defaults_are_the_constructors_defaults() -> None:
    import inspect

    for name in optimizers.methods():
        cls = optimizers.method_class(name)
        for h in cls.spec.hparams:
            for klass in cls.__mro__:
                params = inspect.signature(klass.__init__).parameters if "__init__" in vars(klass) else {}
                if h.name in params:
                    assert params[h.name].default == h.default, (name, h.name)
                    break


# ---- every random draw follows the run seed -----------------------------------------------------------
def _esam_draws(config: RunConfig, steps: int = 12) -> list[list[bool]]:
    method = Run(config).method
    params = method.trainable_params()
    return [[any(p is q for q in method.ascent_params(params)[0]) for p in params] for _ in range(steps)]


def test_esam_draws_follow_the_run_seed(tmp_path: Path) -> None:
    seed0 = _esam_draws(tiny(tmp_path / "a", method="esam", seed=0))
    again = _esam_draws(tiny(tmp_path / "b", method="esam", seed=0))
    seed1 = _esam_draws(tiny(tmp_path / "c", method="esam", seed=1))
    assert seed0 == again
    assert seed0 != seed1
    assert tiny(tmp_path, method="esam", seed=0).method_seed() != tiny(tmp_path, method="esam", seed=1).method_seed()


def test_esam_summary_records_the_derived_seed_and_resume_continues_the_draws(tmp_path: Path,
                                                                              interrupt_run_at) -> None:
    whole = tiny(tmp_path / "whole", method="esam", epochs=3, seed=4)
    run(whole, command="test")
    summary = json.loads((whole.run_dir() / "summary.json").read_text())
    assert summary["method_seed"] == optimizers.method_seed(4, "esam") == whole.method_seed()

    part = tiny(tmp_path / "part", method="esam", epochs=3, seed=4)
    interrupt_run_at(1)
    with pytest.raises(KeyboardInterrupt):
        run(part)
    interrupt_run_at(None)
    run(part, resume=True)
    a = torch.load(whole.run_dir() / "checkpoint.pt", weights_only=True)["method"]["generator"]
    b = torch.load(part.run_dir() / "checkpoint.pt", weights_only=True)["method"]["generator"]
    assert torch.equal(a, b)  # the draw sequence went on where it stopped


# ---- what is recorded is resolved; --resume is strict; --debug --------------------------------------------
def test_config_yaml_records_resolved_values(tmp_path: Path) -> None:
    config = tiny(tmp_path, method="saf", device="auto")
    run(config, command="test")
    stored = yaml.safe_load((config.run_dir() / "config.yaml").read_text())
    assert stored["precision"] == "fp32" and stored["channels_last"] is False and stored["device"] == "cpu"
    assert stored["e_tilde"] == 3 and stored["lam"] == 0.3  # every default
    assert "auto" not in stored.values() and None not in [stored[k] for k in ("precision", "channels_last")]


def test_resume_without_a_matching_run_exits_2_naming_the_closest(tmp_path: Path, capsys) -> None:
    base = ["run", "--dataset", "synthetic", "--model", "mlp_tiny", "--batch-size", "16", "--train-subset", "64",
            "--device", "cpu", "--num-workers", "0", "--no-progress", "--out", str(tmp_path)]
    assert main(base + ["--epochs", "1"]) == 0
    before = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))  # .grid: the run's lock
    capsys.readouterr()
    assert main(base + ["--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run with this config" in err[0] and before[0] in err[0]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == before  # nothing new


def test_debug_lets_the_error_through_with_its_traceback(tmp_path: Path) -> None:
    argv = ["run", "--dataset", "cifar10", "--data-root", str(tmp_path / "missing"), "--device", "cpu",
            "--out", str(tmp_path / "o")]
    assert run_main(*argv).returncode == 2  # without --debug: one line
    with pytest.raises(UsageError, match="missing") as raised:  # with it: the exception itself, uncaught
        main(["--debug", *argv])
    assert raised.traceback[-1].path.name != "cli.py"  # raised where the error is, not re-raised by the CLI


# ---- label noise ----------------------------------------------------------------------------------------
def test_symmetric_label_noise_flips_to_another_class_deterministically() -> None:
    clean = np.random.default_rng(0).integers(0, 10, 20_000)
    noisy = symmetric_label_noise(clean, 10, 0.3)
    assert np.array_equal(noisy, symmetric_label_noise(clean, 10, 0.3))
    flipped = noisy != clean
    assert abs(flipped.mean() - 0.3) < 0.015  # binomial sd at n=20k is 0.003
    counts = np.bincount((noisy[flipped] - clean[flipped]) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].mean()  # uniform over the other classes
    # a subset keeps its samples' noisy labels
    assert np.array_equal(symmetric_label_noise(clean[:500], 10, 0.3), noisy[:500])


def test_label_noise_changes_training_labels_only_and_is_recorded(tmp_path: Path) -> None:
    noisy = Run(tiny(tmp_path / "n", label_noise=0.4, train_subset=512))
    clean = Run(tiny(tmp_path / "c", train_subset=512))
    assert torch.equal(noisy.data.test_targets, clean.data.test_targets)
    changed = int((noisy.data.train_targets != clean.data.train_targets).sum())
    assert changed == noisy.data.label_noise_flipped and 150 < changed < 260  # ~0.4 of 512
    summary = noisy.train()
    assert summary["label_noise"] == 0.4 and summary["label_noise_flipped"] == changed
    assert noisy.config.config_hash() != clean.config.config_hash()


# ---- sharpness every epoch ---------------------------------------------------------------------------------
def _direct_sharpness(model: nn.Module, batches, rho: float) -> float:
    """L(w + rho g/||g||) - L(w) per batch in float64, from a state_dict copy: a computation made another way."""
    import copy

    m = copy.deepcopy(model).double().eval()
    rises = []
    for x, y in batches:
        loss = nn.functional.cross_entropy(m(x.double()), y)
        m.zero_grad()
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in m.parameters()])
        scale = rho / g.norm()
        with torch.no_grad():
            shifted = copy.deepcopy(m)
            for p, q in zip(shifted.parameters(), m.parameters(), strict=True):
                p.add_(q.grad * scale)
            rises.append(float(nn.functional.cross_entropy(shifted(x.double()), y) - loss))
    return sum(rises) / len(rises)


def test_sharpness_matches_a_float64_direct_computation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    model.train()
    batches = [(torch.randn(32, 6), torch.randint(0, 4, (32,))) for _ in range(3)]
    model(torch.randn(64, 6))  # non-trivial BatchNorm running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours = sam_sharpness(model, batches, rho=0.05)
    assert ours == pytest.approx(_direct_sharpness(model, batches, 0.05), rel=1e-4, abs=1e-7)
    assert ours > 0
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and BN stats unchanged


def test_sharpness_column_is_logged_every_epoch_without_changing_training(tmp_path: Path) -> None:
    with_s = tiny(tmp_path / "s", method="sam", epochs=2, sharpness=True, sharpness_samples=32)
    without = tiny(tmp_path / "n", method="sam", epochs=2)
    run(with_s, command="test")
    run(without, command="test")
    import pandas as pd

    a, b = pd.read_csv(with_s.run_dir() / "metrics.csv"), pd.read_csv(without.run_dir() / "metrics.csv")
    assert a["sharpness"].notna().all() and (a["sharpness_time_s"] > 0).all()
    assert list(a["train_loss"]) == list(b["train_loss"]) and list(a["test_acc"]) == list(b["test_acc"])
