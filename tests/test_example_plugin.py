"""examples/logit_penalty, an outside method, installed into a temporary folder (pip, offline, no build
isolation) and run through every command in real processes, with nothing in the project edited: `run --help`,
`run`, a two-seed grid beside sgd, `report`, `overhead --methods sgd logitpen`, `check-method`, and an
undeclared grid key refused in one line. Its float64 trajectory is checked against a loop written here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from optimizers.testing import check_method

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "logit_penalty"
TINY = {"dataset": "synthetic", "model": "mlp_tiny", "epochs": 2, "batch_size": 16, "train_subset": 64,
        "eval_batch_size": 256, "device": "cpu", "num_workers": 0, "progress": False}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed as pip installs it (a dist-info with its entry points), outside the venv."""
    root = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, root / "src")  # pip builds in the source folder: keep the checkout clean
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--target", str(root / "site"), str(root / "src")], check=True, capture_output=True,
                   timeout=300)
    assert list((root / "site").glob("safbench_logit_penalty-0.1.0.dist-info"))
    return root / "site"


def safbench(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_an_installed_plugin_reaches_every_command(site: Path, tmp_path: Path) -> None:
    help_text = safbench(site, "run", "--help", cwd=tmp_path).stdout
    assert "logitpen" in help_text and "--penalty PENALTY" in help_text and "mean squared logit" in help_text

    done = safbench(site, "run", "--method", "logitpen", "--penalty", "0.05", "--out", "single",
                    *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress"], "--no-progress",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (summary,) = [json.loads(p.read_text()) for p in (tmp_path / "single").glob("*/summary.json")]
    assert summary["method"] == "logitpen" and summary["hparams"] == {"penalty": 0.05}
    assert (summary["method_distribution"], summary["method_version"]) == ("safbench-logit-penalty", "0.1.0")
    assert summary["method_entry_point"] == "logit_penalty:LogitPenalty"

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": {**TINY, "out": "grid"}, "grid": {"method": ["sgd", "logitpen"],
                                                                                "seed": [0, 1]},
                                    "per_method": {"logitpen": {"penalty": 0.02}}}))
    ran = safbench(site, "grid", str(grid), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    report = safbench(site, "report", "--results", "grid", "--out", "report", "--no-figures", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "REPORT.md").read_text()
    assert "logitpen" in text and "sgd" in text

    timed = safbench(site, "overhead", "--device", "cpu", "--models", "mlp_tiny", "--methods", "sgd", "logitpen",
                     "--batch-size", "8", "--steps", "1", "--repeats", "2", "--warmup", "1", "--num-samples", "64",
                     "--out", "overhead", cwd=tmp_path)
    assert timed.returncode == 0, timed.stderr
    (steps,) = (tmp_path / "overhead").glob("steps-*.csv")
    assert "logitpen" in steps.read_text()


def test_a_grid_key_the_plugin_does_not_declare_is_one_line_and_exit_2(site: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": TINY, "grid": {"method": ["sgd", "logitpen"]},
                                    "per_method": {"logitpen": {"rho": 0.1}}}))
    refused = safbench(site, "grid", str(grid), "--dry-run", cwd=tmp_path)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "rho" in line and "logitpen" in line


def test_the_plugin_passes_the_conformance_check_from_the_command_line(site: Path, tmp_path: Path) -> None:
    checked = safbench(site, "check-method", "logitpen", cwd=tmp_path)  # DDP included: the workers find it too
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "safbench-logit-penalty 0.1.0" in checked.stdout and "ok   ddp" in checked.stdout


class _PenaltyReference:
    """CE + penalty * mean(z^2) from log-sum-exp in float64, then the same SGD: written from the formula."""

    def __init__(self, model, opt, hp) -> None:
        self.model, self.opt, self.penalty = model, opt, hp["penalty"]

    def step(self, x, y, idx, epoch) -> None:
        self.opt.zero_grad(set_to_none=True)
        z = self.model(x)
        ce = (torch.logsumexp(z, dim=1) - z[torch.arange(len(y)), y]).mean()
        (ce + self.penalty * (z * z).sum() / z.numel()).backward()
        self.opt.step()


def test_the_plugin_matches_its_float64_formula(site: Path, monkeypatch) -> None:
    """In-process, through the installed entry point (the registry reloads with the temporary folder)."""
    import optimizers
    from optimizers import registry

    monkeypatch.syspath_prepend(str(site))
    before = dict(registry._REGISTRY)
    registry._plugins["state"] = "unloaded"
    try:
        assert "logitpen" in optimizers.methods()
        check_method("logitpen", reference=_PenaltyReference, only=("dtypes",))
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(before)
        registry._ORIGINS.clear()
        registry._plugins["state"] = "loaded"
